"""Typed configuration: defaults < TOML file < FABSTIR_* env < CLI flags (see load_config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

APP_NAME = "fabstir-tui"


def default_config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    name: str = Field(default="fabstir-node", min_length=1, max_length=64)
    read_only: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class PathsSection(_Section):
    data_dir: Path = Field(default_factory=default_data_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    models_dirs: list[Path] = Field(default_factory=lambda: [default_data_dir() / "models"])


class InferenceSection(_Section):
    threads: int = Field(default=0, ge=0, le=512, description="0 = physical cores")
    n_gpu_layers: int = Field(default=-1, ge=-1, description="-1 = every layer on the GPU")
    context_length: int = Field(default=4096, ge=64, le=1_048_576)
    batch_size: int = Field(default=512, ge=1, le=65536)
    slots: int = Field(default=1, ge=1, le=64)
    main_gpu: int = Field(default=0, ge=0)
    seed: int = Field(default=-1, ge=-1)
    load_timeout_s: float = Field(default=300.0, gt=0)
    max_tokens_default: int = Field(default=256, ge=1)


class TelemetrySection(_Section):
    gpu_backend: Literal["auto", "nvml", "replay", "none"] = "auto"
    replay_file: Path | None = None
    interval_s: float = Field(default=1.0, gt=0, le=60)
    slow_interval_s: float = Field(default=30.0, gt=0, le=3600)
    history: int = Field(default=120, ge=2, le=10_000)


class UiSection(_Section):
    theme: str = "fabstir-dark"
    refresh_hz: float = Field(default=2.0, gt=0, le=30)


class Config(_Section):
    """The whole effective configuration; immutable once loaded."""

    node: NodeSection = Field(default_factory=NodeSection)
    paths: PathsSection = Field(default_factory=PathsSection)
    inference: InferenceSection = Field(default_factory=InferenceSection)
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    ui: UiSection = Field(default_factory=UiSection)
