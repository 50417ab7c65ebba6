"""The sender's pure parts: revert decoding, fee rules, the nonce counter, RLP serialisation."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.crypto import keccak
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError

from fabstir_tui.engine.chain.fees import (
    FeeQuote,
    bump_fees,
    gwei_to_wei,
    l1_fee_enabled,
    quote_fees,
    serialize_unsigned_1559,
)
from fabstir_tui.engine.chain.nonces import NonceCounter
from fabstir_tui.engine.chain.reverts import RevertDecoder, default_decoder
from fabstir_tui.engine.chain.txerrors import FeeCapError

GWEI = 10**9
HOST = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


# --- revert decoding ---------------------------------------------------------------------------


def test_custom_errors_of_our_artifacts_decode_with_names_and_values() -> None:
    data = selector("StakeTooLow(uint256,uint256)") + encode(["uint256"] * 2, [5, 10**17])
    decoder = default_decoder()
    assert decoder.decode(data) == f"NodeRegistry.StakeTooLow(sent=5, minimum={10**17})"
    addr = selector("AlreadyRegistered(address)") + encode(["address"], [HOST.lower()])
    expected = f"NodeRegistry.AlreadyRegistered(host={HOST})"
    assert decoder.decode("0x" + addr.hex()) == expected


def test_a_selector_shared_by_several_contracts_prefers_the_called_one() -> None:
    data = selector("NotOwner(address)") + encode(["address"], [HOST])
    expected = f"ModelRegistry.NotOwner(caller={HOST})"
    assert default_decoder().decode(data, "ModelRegistry") == expected
    anonymous = default_decoder().decode(data)
    assert anonymous.startswith(f"NotOwner(caller={HOST}) [declared by ")
    assert "HostEarnings" in anonymous and "ModelRegistry" in anonymous


def test_error_string_panic_empty_and_unknown() -> None:
    decoder = RevertDecoder({})
    text = selector("Error(string)") + encode(["string"], ["stake too low"])
    assert decoder.decode(text) == 'Error("stake too low")'
    assert decoder.decode(selector("Panic(uint256)") + encode(["uint256"], [0x12])) == (
        "Panic(0x12): division or modulo by zero"
    )
    assert decoder.decode(selector("Panic(uint256)") + encode(["uint256"], [0x99])) == (
        "Panic(0x99): unknown panic code"
    )
    assert decoder.decode(b"") == "reverted without a reason"
    assert decoder.decode("0x") == "reverted without a reason"
    assert decoder.decode(bytes.fromhex("deadbeef") + bytes(32)) == (
        "reverted with unknown error 0xdeadbeef (36 bytes of data)"
    )


def test_web3_revert_exceptions_are_mapped() -> None:
    decoder = RevertDecoder(
        {"Demo": [{"type": "error", "name": "Late", "inputs": [{"name": "by", "type": "uint64"}]}]}
    )
    late = "0x" + (selector("Late(uint64)") + encode(["uint64"], [3])).hex()
    assert decoder.from_exception(ContractCustomError(late, late)) == "Demo.Late(by=3)"
    panic = "0x" + (selector("Panic(uint256)") + encode(["uint256"], [0x11])).hex()
    assert decoder.from_exception(ContractPanicError("Panic error 0x11", panic)) == (
        "Panic(0x11): arithmetic overflow or underflow"
    )
    plain = ContractLogicError("execution reverted: paused", None)
    assert decoder.from_exception(plain) == "paused"
    assert decoder.from_exception(ContractLogicError("execution reverted", None)) == (
        "reverted without a reason"
    )
    assert decoder.from_exception(ValueError("not a revert")) is None


# --- fees ---------------------------------------------------------------------------------------


def test_quote_is_twice_base_plus_tip_under_the_cap() -> None:
    assert quote_fees(GWEI, 50 * GWEI, 10**6) == FeeQuote(GWEI, 2 * GWEI + 10**6, 10**6, False)
    capped = quote_fees(GWEI, 3 * GWEI // 2, 10**6)
    assert capped.max_fee_per_gas_wei == 3 * GWEI // 2 and capped.capped
    tiny_cap = quote_fees(GWEI, GWEI, 5 * GWEI)  # the tip can never exceed the max fee
    assert tiny_cap.priority_fee_wei == tiny_cap.max_fee_per_gas_wei == GWEI
    with pytest.raises(FeeCapError, match="below the current base fee"):
        quote_fees(2 * GWEI, GWEI, 0)


def test_a_bump_raises_both_fees_and_respects_the_cap() -> None:
    fresh = quote_fees(GWEI, 50 * GWEI, 10**6)
    max_fee, tip = bump_fees(2 * GWEI + 10**6, 10**6, fresh, 50 * GWEI, 15)
    assert max_fee >= (2 * GWEI + 10**6) * 115 // 100 and tip >= 10**6 * 115 // 100
    zero_tip = bump_fees(2 * GWEI, 0, quote_fees(GWEI, 50 * GWEI, 0), 50 * GWEI, 10)
    assert zero_tip[1] >= 1
    with pytest.raises(ValueError, match="at least 10"):
        bump_fees(2 * GWEI, 10**6, fresh, 50 * GWEI, 5)
    with pytest.raises(FeeCapError, match="above the cap"):
        bump_fees(45 * GWEI, 10**6, fresh, 50 * GWEI, 15)


def test_gwei_and_l1_fee_settings() -> None:
    assert gwei_to_wei(0.001) == 10**6 and gwei_to_wei(1.5) == 1_500_000_000
    assert l1_fee_enabled("auto", 8453) and l1_fee_enabled("auto", 84532)
    assert not l1_fee_enabled("auto", 31337)
    assert l1_fee_enabled("on", 31337) and not l1_fee_enabled("off", 8453)


def test_unsigned_serialisation_is_what_eth_account_signs() -> None:
    for data in (b"", b"\x01", bytes(range(200))):
        tx = {
            "type": 2,
            "chainId": 84532,
            "nonce": 0,
            "to": HOST,
            "value": 10**18,
            "data": data,
            "gas": 21_000,
            "maxFeePerGas": 3 * GWEI,
            "maxPriorityFeePerGas": 0,
        }
        expected = TypedTransaction.from_dict(dict(tx)).hash()
        assert keccak(serialize_unsigned_1559(tx)) == expected


# --- nonces -------------------------------------------------------------------------------------


def test_nonce_counter_starts_past_chain_and_journal_and_refills_holes() -> None:
    counter = NonceCounter()
    counter.reset(chain_next=5, highest_live=7, held={7})
    assert counter.next == 8 and counter.free == {5, 6}
    assert [counter.take() for _ in range(4)] == [5, 6, 8, 9]
    counter.give_back(9)
    assert counter.next == 9
    counter.give_back(6)
    assert counter.take() == 6 and counter.take() == 9


def test_giving_back_the_top_nonce_collapses_free_ones_below() -> None:
    counter = NonceCounter()
    counter.reset(chain_next=0, highest_live=None, held=set())
    assert [counter.take() for _ in range(3)] == [0, 1, 2]
    counter.give_back(1)
    counter.give_back(2)
    assert counter.next == 1 and counter.free == set()
    counter.raise_floor(4)
    assert counter.take() == 4
