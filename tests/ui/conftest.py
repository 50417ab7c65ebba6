"""UI fixtures: the app is always built around a real Node (real llama.cpp worker on the tiny
generated GGUF, real SQLite in tmp_path, NVML replayed from a recording)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from devnet_kit import PASSPHRASE, Devnet, start_devnet
from gguf_factory import copy_model, write_tiny_llama
from ui_helpers import make_config

from fabstir_tui.config import Config
from fabstir_tui.engine.node import Node

ConfigFactory = Callable[..., Config]


@pytest.fixture(autouse=True)
def _no_user_themes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the operator's own theme folder (platformdirs config dir) out of the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture
def models_dir(tmp_path: Path, tiny_gguf: Path) -> Path:
    folder = tmp_path / "models"
    copy_model(tiny_gguf, folder / "tiny-llama.gguf")
    return folder


@pytest.fixture(scope="session")
def long_gguf(gguf_dir: Path) -> Path:
    """A wider tiny model (about 200 tokens/s on one thread) with a 4096-token context, so a
    4000-token stream runs for many seconds: long enough to cancel or kill mid-way."""
    return write_tiny_llama(
        gguf_dir / "tiny-long.gguf",
        context_length=4096,
        n_embd=512,
        n_layers=4,
        n_head=8,
        n_head_kv=4,
    )


@pytest.fixture
def config_for(tmp_path: Path, models_dir: Path) -> ConfigFactory:
    def build(**overrides: Any) -> Config:
        return make_config(tmp_path / "data", overrides.pop("models", models_dir), **overrides)

    return build


@pytest.fixture
async def node_for(config_for: ConfigFactory) -> AsyncIterator[Callable[..., Node]]:
    """Nodes built for a test and stopped after it, whatever the app did with them."""
    nodes: list[Node] = []

    def build(**overrides: Any) -> Node:
        node = Node(config_for(**overrides))
        nodes.append(node)
        return node

    yield build
    for node in nodes:
        await node.stop()


@pytest.fixture
def devnet(models_dir: Path) -> Iterator[Devnet]:
    """A fresh anvil with our suite and the tiny model approved; stopped after the test."""
    chain = start_devnet(models_dir / "tiny-llama.gguf")
    try:
        yield chain
    finally:
        chain.anvil.stop()


@pytest.fixture
def passphrase_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test keystore's passphrase in a 0600 file the node unlocks from at start."""
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    monkeypatch.setenv("FABSTIR_PASSPHRASE_FILE", str(path))
    return path
