"""`serve` over several processes on one host: a supervisor and `GA_SERVE_PROCESSES` serving processes.

Each serving process is a whole `serve` of its own (gRPC, HTTP gateway, health, its own pools) on the
same ports with SO_REUSEPORT, so the kernel spreads incoming connections over them and one Python core
per process stops being the limit. Only the first runs the scheduler: transfer, aggregation, retention
and alerts are safe in several processes at once, but one set per host is enough and the others keep
their CPU for answering (more pipeline throughput: `generation-analytics worker` processes).

The supervisor has started the embedded servers, if any, and hands every child their addresses. A child
that dies is started again after a backoff (1 s, doubling up to 30 s while it keeps dying young); a child
whose supervisor is gone stops by itself. SIGTERM/SIGINT stop every child with the usual grace period.

Limits: `/metrics` and a process's health describe the process that answered the scrape; the kernel
balances connections, not calls, so one client with one long-lived channel stays on one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess

from generation_analytics.service.logs import configure_logging
from generation_analytics.service.settings import Settings

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0
MAX_RESTART_BACKOFF_S = 30.0
# A child that served this long before dying starts its backoff afresh.
HEALTHY_RUN_S = 60.0
POLL_S = 0.5


def child_settings(settings: Settings, index: int) -> Settings:
    """The settings of serving process `index`: one process each, the scheduler in the first only."""
    return replace(
        settings,
        server=replace(settings.server, processes=1),
        schedule=replace(settings.schedule, enabled=settings.schedule.enabled and index == 0),
    )


def _run_child(settings: Settings, supervisor_pid: int) -> None:
    """A serving process (spawned: a fresh interpreter)."""
    from generation_analytics.service.api.server import serve_here, use_uvloop

    configure_logging(settings.log_level)
    threading.Thread(target=_stop_when_orphaned, args=(supervisor_pid,), daemon=True).start()
    use_uvloop()
    asyncio.run(serve_here(settings, shared_ports=True))


def _stop_when_orphaned(supervisor_pid: int) -> None:
    """SIGTERM this process once its supervisor is gone (killed outright, it could not stop us)."""
    while os.getppid() == supervisor_pid:
        time.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: stopping", supervisor_pid)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Child:
    index: int
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


async def serve_processes(settings: Settings) -> None:
    """Run `settings.server.processes` serving processes until SIGTERM/SIGINT, replacing any that dies."""
    context = multiprocessing.get_context("spawn")
    children = [Child(index) for index in range(settings.server.processes)]

    def start(child: Child) -> None:
        process = context.Process(
            target=_run_child, args=(child_settings(settings, child.index), os.getpid()), name=f"serve-{child.index}"
        )
        process.start()
        child.process, child.started_at, child.restart_at = process, time.monotonic(), None
        log.info("serving process %d started (pid %s)", child.index, process.pid)

    for child in children:
        start(child)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving with %d processes; SIGTERM or Ctrl-C stops", len(children))
    while not stop.is_set():
        now = time.monotonic()
        for child in children:
            if child.process is not None and not child.process.is_alive():
                child.failures = 1 if now - child.started_at >= HEALTHY_RUN_S else child.failures + 1
                delay = min(RESTART_BACKOFF_S * 2 ** (child.failures - 1), MAX_RESTART_BACKOFF_S)
                log.error(
                    "serving process %d (pid %s) exited with %s; starting another in %.0f s",
                    child.index, child.process.pid, child.process.exitcode, delay,
                )  # fmt: skip
                child.process, child.restart_at = None, now + delay
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                start(child)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
    await _stop_all([c.process for c in children if c.process is not None], settings.server.shutdown_grace_s)


async def _stop_all(processes: list[BaseProcess], grace_s: float) -> None:
    """SIGTERM each (they finish in-flight calls within `grace_s`), then SIGKILL whatever is left."""
    log.info("stopping %d serving processes (grace %.1f s)", len(processes), grace_s)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s + 10.0  # their own shutdown (pools, scheduler) after the grace
    for process in processes:
        await asyncio.to_thread(process.join, max(deadline - time.monotonic(), 0.0))
        if process.is_alive():
            log.error("serving process %s did not stop in time: killing it", process.pid)
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
