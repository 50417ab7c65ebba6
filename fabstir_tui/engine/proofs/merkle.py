"""Merkle roots over receipt hashes: one on-chain commitment for many signed receipts.

Pairing rule (OpenZeppelin ``MerkleProof`` compatible, so a contract can verify a leaf):
a parent is ``keccak256(min(a, b) ‖ max(a, b))`` — the two 32-byte children sorted as
unsigned big-endian numbers and concatenated. Levels are built left to right in pairs; an
odd last node is promoted unchanged to the next level (no self-pairing, so no duplicate
leaf can forge a sibling). A proof is the list of sibling hashes from leaf to root, and a
promoted level simply contributes no sibling. One leaf: the root is the leaf. No leaves:
refused. Leaves are receipt hashes (EIP-712 digests), already 32-byte hashes of typed data,
so they are used as is (not re-hashed). This is a signed commitment with a challenge
window, not a zero-knowledge proof.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils.crypto import keccak

HASH_SIZE = 32


def _check(node: bytes, what: str) -> bytes:
    if not isinstance(node, bytes) or len(node) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")
    return node


def hash_pair(a: bytes, b: bytes) -> bytes:
    """The parent of two nodes under the sorted-pair rule (order of a, b does not matter)."""
    low, high = (a, b) if a <= b else (b, a)
    return keccak(low + high)


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last."""
    if not leaves:
        raise ValueError("a Merkle root needs at least one leaf")
    level = [_check(leaf, f"leaf {i}") for i, leaf in enumerate(leaves)]
    levels = [level]
    while len(level) > 1:
        parents = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
        levels.append(level)
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root committing to all leaves in order; a single leaf is its own root."""
    return _levels(leaves)[-1][0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root (what MerkleProof.verify takes)."""
    levels = _levels(leaves)
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside 0..{len(leaves) - 1}")
    proof: list[bytes] = []
    position = index
    for level in levels[:-1]:
        sibling = position ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        position //= 2
    return proof


def verify_merkle_proof(proof: Sequence[bytes], leaf: bytes, root: bytes) -> bool:
    """True when folding `proof` onto `leaf` gives `root` (malformed input gives False)."""
    try:
        node = _check(leaf, "leaf")
        _check(root, "root")
        for i, sibling in enumerate(proof):
            node = hash_pair(node, _check(sibling, f"proof element {i}"))
    except ValueError:
        return False
    return node == root
