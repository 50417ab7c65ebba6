"""Merkle roots over receipt hashes: hand-computed roots, proofs for every leaf, hypothesis."""

from __future__ import annotations

import pytest
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from fabstir_tui.engine.proofs.merkle import (
    hash_pair,
    merkle_proof,
    merkle_root,
    verify_merkle_proof,
)


def leaf(i: int) -> bytes:
    return keccak(f"receipt {i}".encode())


def sorted_pair(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


def test_single_leaf_is_its_own_root_and_empty_is_refused() -> None:
    assert merkle_root([leaf(0)]) == leaf(0)
    assert merkle_proof([leaf(0)], 0) == []
    assert verify_merkle_proof([], leaf(0), leaf(0))
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle_root([])
    with pytest.raises(ValueError, match="32 bytes"):
        merkle_root([b"short"])


def test_roots_of_two_three_and_five_leaves_by_hand() -> None:
    a, b, c, d, e = (leaf(i) for i in range(5))
    assert merkle_root([a, b]) == sorted_pair(a, b)
    assert merkle_root([b, a]) == sorted_pair(a, b)  # sorted pairs: order inside a pair is free
    # Three leaves: (a,b) paired, c promoted, then paired with the parent.
    assert merkle_root([a, b, c]) == sorted_pair(sorted_pair(a, b), c)
    # Five: ((a,b),(c,d)) and e promoted twice.
    assert merkle_root([a, b, c, d, e]) == sorted_pair(
        sorted_pair(sorted_pair(a, b), sorted_pair(c, d)), e
    )
    assert hash_pair(a, b) == hash_pair(b, a) == sorted_pair(a, b)
    assert merkle_proof([a, b, c], 2) == [sorted_pair(a, b)]
    assert merkle_proof([a, b, c], 0) == [b, c]


@pytest.mark.parametrize("count", range(1, 10))
def test_every_leaf_proves_and_wrong_ones_fail(count: int) -> None:
    leaves = [leaf(i) for i in range(count)]
    root = merkle_root(leaves)
    outsider = leaf(1000)
    for index, item in enumerate(leaves):
        proof = merkle_proof(leaves, index)
        assert verify_merkle_proof(proof, item, root)
        assert not verify_merkle_proof(proof, outsider, root)
        assert not verify_merkle_proof(proof, item, outsider)
        if proof:
            broken = [*proof[:-1], keccak(proof[-1])]
            assert not verify_merkle_proof(broken, item, root)
            assert not verify_merkle_proof(proof[:-1], item, root)
    if count > 1:  # a proof is for its own leaf only
        assert not verify_merkle_proof(merkle_proof(leaves, 0), leaves[1], root)
    with pytest.raises(IndexError):
        merkle_proof(leaves, count)


def test_malformed_proof_input_is_false_not_an_error() -> None:
    root = merkle_root([leaf(0), leaf(1)])
    assert not verify_merkle_proof([b"short"], leaf(0), root)
    assert not verify_merkle_proof([leaf(1)], b"short", root)


hashes = st.binary(min_size=32, max_size=32)


@given(st.lists(hashes, min_size=1, max_size=40, unique=True), st.data())
def test_hypothesis_proofs_verify_and_bind_the_leaf(
    leaves: list[bytes], data: st.DataObject
) -> None:
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle_proof(leaves, index)
    assert verify_merkle_proof(proof, leaves[index], root)
    assert len(proof) <= (len(leaves) - 1).bit_length()
    other = data.draw(hashes.filter(lambda h: h not in leaves))
    assert not verify_merkle_proof(proof, other, root)
    changed = list(leaves)
    changed[index] = other
    assert merkle_root(changed) != root
