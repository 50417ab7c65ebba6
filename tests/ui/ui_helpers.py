"""Helpers shared by the UI tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.css.query import NoMatches
from textual.pilot import Pilot

from fabstir_tui.config import Config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"
H200_REPLAY = FIXTURES / "h200-idle-then-busy.jsonl"
NO_DRIVER_REPLAY = FIXTURES / "no-driver.jsonl"


def make_config(
    data_dir: Path,
    models_dir: Path,
    *,
    replay: Path = H200_REPLAY,
    interval_s: float = 0.2,
    theme: str = "fabstir-dark",
    name: str = "ui-test-node",
) -> Config:
    """A node on tmp dirs with GPU telemetry replayed from a real recording."""
    return Config.model_validate(
        {
            "node": {"name": name},
            "paths": {"data_dir": str(data_dir), "models_dirs": [str(models_dir)]},
            "inference": {"threads": 1},
            "telemetry": {
                "gpu_backend": "replay",
                "replay_file": str(replay),
                "interval_s": interval_s,
            },
            "ui": {"theme": theme, "refresh_hz": 10},
        }
    )


def key(path: Path) -> str:
    """How the engine keys a model: its resolved path."""
    return str(path.resolve())


def _holds(condition: Callable[[], object]) -> bool:
    try:
        return bool(condition())
    except NoMatches:  # the widget the condition reads is not mounted yet
        return False


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], object], what: str, bound_s: float = 30.0
) -> None:
    """Let the app run until `condition()` holds; the bound only stops a hung test."""
    deadline = time.monotonic() + bound_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.02)
