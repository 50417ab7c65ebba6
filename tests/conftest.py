"""Shared fixtures: real GGUF files written by the tiny-model factory, one set per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_factory import write_not_gguf, write_tiny_llama, write_truncated_copy


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def tiny_gguf(gguf_dir: Path) -> Path:
    """A 2-layer, 64-wide F32 llama with a ChatML template; loads and generates in llama.cpp."""
    return write_tiny_llama(gguf_dir / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def truncated_gguf(tiny_gguf: Path, gguf_dir: Path) -> Path:
    """The tiny model cut in half, like an interrupted download."""
    return write_truncated_copy(tiny_gguf, gguf_dir / "truncated.gguf")


@pytest.fixture(scope="session")
def not_gguf(gguf_dir: Path) -> Path:
    """A text file with a .gguf name."""
    return write_not_gguf(gguf_dir / "not-a-model.gguf")
