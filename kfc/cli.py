"""The `kfc` command: `kfc run` consumes the job queue until SIGTERM (settings from KFC_*)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from embark.errors import EmbarkError


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="kfc", description="EmbArk's Kafka consumer.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    sub.add_parser("run", help="consume jobs, encode through Retina, store, commit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from kfc.main import run
    from kfc.settings import KfcSettings

    try:
        return asyncio.run(run(KfcSettings()))
    except EmbarkError as exc:
        print(f"kfc: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
