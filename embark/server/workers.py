"""`embark serve` as several worker processes on one port (``EMBARK_WORKERS``, default one per
core). grpc.aio runs a server on one event loop, one core at most; the hit path shares nothing
but its LRU, so N processes listening on the same port (SO_REUSEPORT: the kernel spreads new
connections over them) serve about N times the calls. Each worker has its own LRU, its own
store and queue clients and its own health (readiness follows its own backends).

The parent only supervises:
- it reserves the port (and the HTTP port) first with a bound SO_REUSEPORT socket, so port 0
  resolves to one port every worker shares, and nothing else takes it between workers' starts;
- it serves the one metrics port, in prometheus_client's multiprocess mode (the workers write
  their samples to files in PROMETHEUS_MULTIPROC_DIR, a directory it creates and removes);
- SIGTERM (or SIGINT) is passed to every worker, each drains its calls within
  ``shutdown_grace_s``; a worker still running after that is killed; SIGHUP (reload the
  catalog and heads) is passed on too;
- a worker that exits on its own (crash, refused configuration) stops the others and the
  parent exits non-zero, so the orchestrator restarts the whole group: a host never serves with
  fewer workers than configured without anyone seeing it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from embark.server import loop
from embark.settings import EmbarkSettings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# cgroup v2's CPU quota of this process's group: "max 100000" (none) or "200000 100000"
# (2 CPUs' worth of time per period), as Docker's --cpus and Kubernetes' limits set it.
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def worker_count(settings: EmbarkSettings, cpu_max: Path = CPU_MAX) -> int:
    """``settings.workers``, or one per core this process may use: its CPU affinity, capped by
    its cgroup's CPU quota when there is one (a container sees the host's cores in its affinity;
    a worker per host core under a 2-CPU quota would only contend). Nomad's ``cpu`` is a share,
    not a quota: its job sets EMBARK_WORKERS."""
    if settings.workers:
        return settings.workers
    cores = len(os.sched_getaffinity(0)) or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 file (or an unexpected one): the affinity alone
    return cores


def run(settings: EmbarkSettings) -> int:
    """`embark serve`: one process when ``worker_count`` is 1, else a parent and N workers."""
    from embark.server.main import serve

    n = worker_count(settings)
    if n == 1:
        loop.run(serve(settings), settings.event_loop)
        return 0
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(_reserve(settings.host, settings.port))
        http_port = settings.http_port
        if http_port is not None:
            http_port = stack.enter_context(_reserve(settings.host, http_port))
        metrics_dir = tempfile.mkdtemp(prefix="embark-metrics-")
        stack.callback(shutil.rmtree, metrics_dir, True)
        # Read by prometheus_client when a worker imports it: the workers are spawned (fresh
        # interpreters) and inherit it.
        os.environ[MULTIPROC_ENV] = metrics_dir
        if settings.metrics_port:
            _serve_metrics(settings.host, settings.metrics_port, metrics_dir)
        shared = settings.model_copy(
            update={
                "port": port,
                "http_port": http_port,
                "metrics_port": 0,
                "workers": 1,
                # EMBARK_CACHE_BYTES bounds the process group's memory, not each worker's.
                "cache_bytes": settings.cache_bytes // n,
            }
        )
        return _supervise(shared, n, metrics_dir)
    return 1  # pragma: no cover (the with block returns)


def _supervise(settings: EmbarkSettings, n: int, metrics_dir: str) -> int:
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    procs: list[BaseProcess] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        # `kill -HUP` reloads the catalog and heads: every worker reloads its own.
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGHUP)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        for i in range(n):
            p = ctx.Process(target=_worker, args=(settings, level), name=f"embark-worker-{i}")
            p.start()
            procs.append(p)
        log.info(
            "embark: %d workers on %s:%d (pids %s)",
            n,
            settings.host,
            settings.port,
            ", ".join(str(p.pid) for p in procs),
        )
        code = 0
        while not stopping:
            ended = wait([p.sentinel for p in procs], timeout=0.5)
            if ended:
                # The sentinels that fired, not is_alive(): a worker can be reported alive
                # for a moment after its sentinel is ready.
                dead = [w for w in procs if w.sentinel in ended]
                for w in dead:
                    w.join(1)
                log.error(
                    "embark worker(s) %s exited (%s): stopping the others",
                    ", ".join(str(w.pid) for w in dead),
                    ", ".join(str(w.exitcode) for w in dead),
                )
                # The worker's own exit status (2: a configuration the worker refused, as a
                # single process would exit), else 1.
                code = next((c for w in dead if (c := w.exitcode or 0) > 0), 1)
                break
        _stop_all(procs, settings.shutdown_grace_s + 5.0, metrics_dir)
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_all(procs: list[BaseProcess], wait_s: float, metrics_dir: str) -> None:
    """SIGTERM to every live worker (each drains within its grace), then kill what remains."""
    from prometheus_client import multiprocess

    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(wait_s)
        if p.is_alive():
            log.warning("embark worker %s did not stop within %.0f s: killed", p.pid, wait_s)
            p.kill()
            p.join(5)
        if p.pid is not None:
            multiprocess.mark_process_dead(p.pid, metrics_dir)  # type: ignore[no-untyped-call]


def _worker(settings: EmbarkSettings, level: int) -> None:
    from embark.errors import EmbarkError
    from embark.server.main import serve

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The drain is bounded by the grace; a worker still alive well past it exits hard.
    _stop_with_parent(os.getppid(), exit_after_s=settings.shutdown_grace_s + 10.0)
    # Ctrl-C reaches the whole process group: the worker's own handler drains; the parent's
    # SIGTERM that follows is then a no-op.
    try:
        loop.run(serve(settings, worker=True), settings.event_loop)
    except EmbarkError as exc:
        print(f"embark: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _stop_with_parent(parent: int, *, exit_after_s: float, every_s: float = 1.0) -> None:
    """Drain and stop (SIGTERM to itself) once the parent is gone: a parent killed with
    SIGKILL runs no shutdown code, and orphaned workers would keep serving the port beside
    the group the orchestrator starts next. A drain that has not ended ``exit_after_s`` later
    (a backend that does not close: seen once in a CI rehearsal on a loaded box, the orphan
    still running a minute on) ends in a hard exit: an orphan must not outlive its group."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.warning("embark worker %d: the parent %d is gone, stopping", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(exit_after_s)
        log.error(
            "embark worker %d: still draining %.0f s after its parent went; exiting",
            os.getpid(),
            exit_after_s,
        )
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="embark-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _reserve(host: str, port: int) -> Iterator[int]:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT and hold it: port 0 becomes a real
    port all workers bind, and no other program takes it in between. A bound socket that does
    not listen receives no connections."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        bound: int = sock.getsockname()[1]
        yield bound
    finally:
        sock.close()


def _serve_metrics(host: str, port: int, metrics_dir: str) -> None:
    """The one metrics port: every worker's samples summed, and the hit ratio derived."""
    from prometheus_client import start_http_server

    from embark.metrics import multiprocess_registry

    start_http_server(port, addr=host, registry=multiprocess_registry(metrics_dir))
