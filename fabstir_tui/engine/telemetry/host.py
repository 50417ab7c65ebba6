"""Host readings (CPU, load, RAM, disk) via psutil, for the panel beside the GPU."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from fabstir_tui.engine.events import HostSnapshot


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent: the data dir may not be created yet."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or os.sep)


class HostSampler:
    """Reads the host; CPU % is measured between successive calls, so keep one instance."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # the first call only starts psutil's measurement

    def sample(self) -> HostSnapshot:
        """One reading; the disk is the filesystem holding `disk_path` (models and the store)."""
        memory = psutil.virtual_memory()
        disk_path = _existing(self.disk_path)
        disk = psutil.disk_usage(str(disk_path))
        return HostSnapshot(
            cpu_pct=psutil.cpu_percent(interval=None),
            cpu_count=psutil.cpu_count(logical=True) or 1,
            load_avg_1m=psutil.getloadavg()[0],
            ram_used_bytes=memory.total - memory.available,
            ram_total_bytes=memory.total,
            disk_path=str(disk_path),
            disk_free_bytes=disk.free,
            disk_total_bytes=disk.total,
        )
