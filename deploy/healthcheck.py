"""gRPC health probe for the EmbArk image (Docker HEALTHCHECK, compose healthchecks).

    python deploy/healthcheck.py [auto|embark|kfc|retina] [--address HOST:PORT] [--service NAME]

Exits 0 when the process answers SERVING on the standard ``grpc.health.v1.Health/Check``, 1
otherwise (NOT_SERVING, UNKNOWN, refused, timed out). One image runs three processes, so with
``auto`` (the default) the probe finds which one runs in the container from the command lines
in ``/proc`` and asks the port that process listens on, read from the same environment variables
its settings class reads (``EMBARK_PORT``, ``KFC_HEALTH_PORT``, ``RETINA_PORT``, and the
``*_HOST`` bind address). The defaults below equal the settings classes' defaults; a unit test
(tests/unit/deploy) keeps them equal. The settings classes are not imported: they pull in the
whole service, and a probe that runs every 10 seconds should cost a gRPC call, not an import.

A separate Go binary (grpc_health_probe) would do the same, but it is distributed as a GitHub
release download, not as a registry package; grpcio-health-checking is already in the image.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple


class Probe(NamedTuple):
    """Which process a service is, and where its gRPC health answers."""

    script: str  # console script name, as in pyproject's [project.scripts]
    command: str  # its serving subcommand
    host_env: str
    host_default: str
    port_env: str
    port_default: int


PROBES: Mapping[str, Probe] = {
    "embark": Probe("embark", "serve", "EMBARK_HOST", "127.0.0.1", "EMBARK_PORT", 50051),
    # The image's default command; `--port` defaults to EmbArk's port (EMBARK_PORT is not read).
    "dev": Probe("embark", "dev", "EMBARK_HOST", "127.0.0.1", "EMBARK_PORT", 50051),
    "kfc": Probe("kfc", "run", "KFC_HOST", "127.0.0.1", "KFC_HEALTH_PORT", 50053),
    "retina": Probe("retina", "serve", "RETINA_HOST", "127.0.0.1", "RETINA_PORT", 50052),
}
# Wildcard binds are reached on loopback from inside the container.
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 - compared, never bound


def detect(cmdlines: Iterable[Sequence[str]]) -> str | None:
    """The service whose serving command appears in one of ``cmdlines`` (argv lists)."""
    for argv in cmdlines:
        names = [Path(arg).name for arg in argv]
        for name, probe in PROBES.items():
            if probe.script in names:
                rest = argv[names.index(probe.script) + 1 :]
                if probe.command in rest:
                    return name
    return None


def _proc_cmdlines() -> list[list[str]]:
    lines = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = entry.read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if raw:
            lines.append(raw.rstrip(b"\0").decode(errors="replace").split("\0"))
    return lines


def address_for(service: str, env: Mapping[str, str]) -> str:
    """``host:port`` of ``service``'s gRPC health, from its settings' environment variables."""
    probe = PROBES[service]
    host = env.get(probe.host_env, probe.host_default).strip()
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{int(env.get(probe.port_env, probe.port_default))}"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name that ``address`` reports for ``service``, or the error."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"error: {exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gRPC health probe for embark/kfc/retina")
    parser.add_argument("target", nargs="?", default="auto", choices=["auto", *PROBES])
    parser.add_argument("--address", help="host:port (default: from the service's settings)")
    parser.add_argument("--service", default="", help="health service name ('' = the server)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)

    address = args.address
    if address is None:
        target = args.target if args.target != "auto" else detect(_proc_cmdlines())
        if target is None:
            print("healthcheck: no embark/kfc/retina process in this container", file=sys.stderr)
            return 1
        address = address_for(target, os.environ)
    status = check(address, args.service, args.timeout)
    print(f"{address} {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
