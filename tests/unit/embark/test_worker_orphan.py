"""An orphaned worker whose drain hangs still exits: ``embark.server.workers._stop_with_parent``
in a real child process that ignores SIGTERM (a drain that never ends)."""

from __future__ import annotations

import subprocess
import sys
import time

CHILD = """
import os, signal, time
from embark.server.workers import _stop_with_parent
signal.signal(signal.SIGTERM, lambda *_: None)  # the drain never ends
# A parent pid that is not ours: the watch finds it gone at once.
_stop_with_parent(os.getppid() + 10_000_000, exit_after_s=0.5, every_s=0.05)
time.sleep(30)
"""


def test_an_orphan_whose_drain_hangs_exits_hard() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=20)

    assert done.returncode == 1
    assert time.monotonic() - started < 15
    assert "the parent" in done.stderr
    assert "still draining" in done.stderr
