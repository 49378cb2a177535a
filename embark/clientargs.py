"""What every `embark` command that talks to a running EmbArk shares: its flags (target, token,
TLS, each with an environment default so scripts set them once), the client they build, and
the exit codes scripts branch on.

    --target   EMBARK_TARGET, else 127.0.0.1:50051
    --token    EMBARK_TOKEN
    --tls / --ca-file / --cert-file / --key-file / --server-name   (EMBARK_TARGET_CA_FILE, ...)

Exit codes: 0 done; 2 a refused request or bad arguments (the message says why); 3 done, but
some answers were FAILED or DROPPED (or input lines were skipped): a script must not assume
every vector is there; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from embark_client import EmbarkClient, Tls

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_OK, EXIT_REFUSED, EXIT_INCOMPLETE = 0, 2, 3
_INCOMPLETE = {"FAILED", "DROPPED"}


def add_client_args(cmd: argparse.ArgumentParser) -> None:
    env = os.environ.get
    cmd.add_argument(
        "--target",
        default=env("EMBARK_TARGET", DEFAULT_TARGET),
        help="a running EmbArk, host:port (EMBARK_TARGET)",
    )
    cmd.add_argument("--token", default=env("EMBARK_TOKEN"), help="bearer token (EMBARK_TOKEN)")
    tls = cmd.add_argument_group("TLS (off unless one of these is given)")
    tls.add_argument("--tls", action="store_true", help="TLS with the system's trusted roots")
    tls.add_argument("--ca-file", type=Path, default=env("EMBARK_TARGET_CA_FILE"))
    tls.add_argument("--cert-file", type=Path, default=env("EMBARK_TARGET_CERT_FILE"))
    tls.add_argument("--key-file", type=Path, default=env("EMBARK_TARGET_KEY_FILE"))
    tls.add_argument("--server-name", default=env("EMBARK_TARGET_SERVER_NAME"))


def tls_from(args: argparse.Namespace) -> Tls | None:
    tls = Tls(
        enabled=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        server_name=args.server_name,
    )
    return tls if tls.on else None


def client_from(args: argparse.Namespace, wait_ms: int = 0) -> EmbarkClient:
    return EmbarkClient(
        args.target, token=args.token, tls=tls_from(args), timeout_s=10.0 + wait_ms / 1000
    )


def exit_code(statuses: Iterable[str], *, skipped: int = 0) -> int:
    """3 when any answer was FAILED or DROPPED, or input was skipped; else 0."""
    incomplete = skipped > 0 or any(status in _INCOMPLETE for status in statuses)
    return EXIT_INCOMPLETE if incomplete else EXIT_OK
