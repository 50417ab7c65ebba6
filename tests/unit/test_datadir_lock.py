"""One node per data dir: a second process is refused with the holder's PID."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabstir_tui.engine.datadir_lock import DataDirBusyError, DataDirLock

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from fabstir_tui.engine.datadir_lock import DataDirLock\n"
    "lock = DataDirLock.acquire(Path(sys.argv[1]))\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_second_process_is_refused_and_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusyError) as refused:
            DataDirLock.acquire(tmp_path)
        assert f"pid {holder.pid}" in str(refused.value)
        assert str(tmp_path) in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    lock = DataDirLock.acquire(tmp_path)  # the kernel dropped the dead holder's lock
    assert (tmp_path / "node.lock").read_text().strip() == str(os.getpid())
    lock.release()
    lock.release()  # twice is fine
