"""Compiled contract artifacts (ABI + bytecode) shipped inside the package by `make contracts`."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

_PACKAGE = "fabstir_tui.engine.chain"
_FOLDER = "artifacts"


class ArtifactError(LookupError):
    """An artifact is missing or malformed; the message says how to rebuild it."""


@dataclass(frozen=True)
class Artifact:
    """One contract's ABI and creation/runtime bytecode, as solc wrote them."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


def artifact_names() -> list[str]:
    """The contracts that have an artifact, sorted, so callers can list what can be deployed."""
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    if not folder.is_dir():
        return []
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


@functools.cache
def load_artifact(name: str) -> Artifact:
    """Load a contract's artifact by name (parsed once per process: the status refresh asks
    often); a missing one names the contracts that exist."""
    entry = resources.files(_PACKAGE).joinpath(_FOLDER, f"{name}.json")
    if not entry.is_file():
        known = ", ".join(artifact_names()) or "none"
        raise ArtifactError(
            f"no compiled artifact for contract {name!r} (have: {known}); "
            "run `make contracts` after adding contracts/*.sol"
        )
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        return Artifact(
            name=str(data["contractName"]),
            abi=list(data["abi"]),
            bytecode=str(data["bytecode"]),
            deployed_bytecode=str(data["deployedBytecode"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(
            f"artifact {name!r} is malformed ({exc}); run `make contracts`"
        ) from exc
