"""The `generation-analytics` command's entry point.

It turns gRPC's fork handlers off before gRPC is imported (unless GRPC_ENABLE_FORK_SUPPORT says otherwise):
this program forks only to exec (subprocess, multiprocessing's "spawn"), and the handlers grpcio's core
enables restart gRPC's threads in the child between fork and exec, where they can crash it (seen as
`pg_ctl start` dying of SIGSEGV, the kernel naming an `event_engine` thread in libpython; the workaround gRPC
documents for fork-then-exec programs).
"""

from __future__ import annotations

import os


def main() -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from generation_analytics.cli import main as run

    return run()
