"""The chain side of the node: a local anvil for the devnet and tests, later the chain client."""

from fabstir_tui.engine.chain.anvil import (
    DEFAULT_MNEMONIC,
    Anvil,
    AnvilError,
    RpcError,
    find_anvil,
    rpc,
)
from fabstir_tui.engine.chain.artifacts import (
    Artifact,
    ArtifactError,
    artifact_names,
    load_artifact,
)

__all__ = [
    "DEFAULT_MNEMONIC",
    "Anvil",
    "AnvilError",
    "Artifact",
    "ArtifactError",
    "RpcError",
    "artifact_names",
    "find_anvil",
    "load_artifact",
    "rpc",
]
