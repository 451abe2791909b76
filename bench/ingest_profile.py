"""Where RecordEvent's microseconds go: the service under cProfile for --calls sequential RecordEvent calls.

The service runs as its own process (`generation-analytics serve`, pipeline off, as bench.ingest runs
it) under `python -m cProfile`; this process makes the calls, then stops it with SIGTERM (a graceful
stop, so the profile is written) and prints the functions with the most own time, per call. cProfile
slows Python code down (every function call is counted), so read the shares, not the absolute figures,
and compare with a sampling profiler (py-spy) when in doubt:

    py-spy record --rate 2000 --format raw -o record_event.txt --pid <serve pid>

Only the event loop's thread is profiled; gRPC's C core works in its own threads (not shown).

    .venv/bin/python -m bench.ingest_profile [--calls 10000] [--top 25]
"""

from __future__ import annotations

import argparse
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import rerun_command, scratch_database, scratch_namespace, service_environment
from bench.ingest import events
from generation_analytics.v1 import events_pb2, events_pb2_grpc
from tests.fix_processes import CLI


def profiled_service(dsn: str, namespace: str, output: str) -> tuple[subprocess.Popen[bytes], str]:
    env, address = service_environment(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false")
    process = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", output, CLI, "serve"], env=env)
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return process, address
            except grpc.RpcError:
                time.sleep(0.2)
    process.kill()
    raise RuntimeError("the profiled service did not start")


def run(calls: int, top: int) -> None:
    with scratch_database() as dsn, scratch_namespace() as namespace, tempfile.TemporaryDirectory() as tmp:
        output = str(Path(tmp) / "serve.prof")
        process, address = profiled_service(dsn, namespace, output)
        try:
            stub = events_pb2_grpc.EventServiceStub(grpc.insecure_channel(address))
            sample = events(1_000, 1)
            started = time.perf_counter()
            for i in range(calls):
                stub.RecordEvent(events_pb2.RecordEventRequest(event=sample[i % len(sample)]))
            elapsed = time.perf_counter() - started
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        stats = pstats.Stats(output)
        print(f"\n{calls:,} RecordEvent calls in {elapsed:.2f} s ({elapsed / calls * 1e6:.0f} µs per call, profiled)")
        print(f"Functions of the serving process by own time (µs per call = own time / {calls:,}):")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # type: ignore[attr-defined]
        for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows:
            where = f"{Path(filename).name}:{line}" if line else filename
            print(f"  {tottime / calls * 1e6:7.1f} µs own {cumtime / calls * 1e6:8.1f} µs cum"
                  f" {ncalls / calls:5.1f}/call  {name} ({where})")  # fmt: skip
        print(f"  rerun: {rerun_command()}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    run(args.calls, args.top)


if __name__ == "__main__":
    main()
