"""The chain side of the node: a local anvil for the devnet and tests, later the chain client."""

from fabstir_tui.engine.chain.anvil import (
    DEFAULT_MNEMONIC,
    Anvil,
    AnvilError,
    RpcError,
    find_anvil,
    rpc,
)

__all__ = ["DEFAULT_MNEMONIC", "Anvil", "AnvilError", "RpcError", "find_anvil", "rpc"]
