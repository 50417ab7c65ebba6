"""TxSender on a real anvil: concurrency, the journal across restarts and crashes, speed-ups,
fee caps, the L1 fee (with a test-double oracle), revert decoding and a dead RPC."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import encode
from follower_kit import AmbiguousSendRpc
from web3 import AsyncWeb3, Web3

from fabstir_tui.config import ChainSection
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.chain.artifacts import load_artifact
from fabstir_tui.engine.chain.deploy import Deployment, DeployParams, deploy_suite
from fabstir_tui.engine.chain.events import TxSettled, TxSubmitted
from fabstir_tui.engine.chain.fees import GAS_PRICE_ORACLE, GWEI
from fabstir_tui.engine.chain.journal import JournalEntry
from fabstir_tui.engine.chain.rpc_pool import OwnSessionHTTPProvider
from fabstir_tui.engine.chain.sender import TxSender
from fabstir_tui.engine.chain.txerrors import (
    CrashPointReached,
    FeeCapError,
    RpcUnavailableError,
    TxBroadcastUncertain,
    TxError,
    TxFailedError,
    TxRejectedError,
    TxRevertedError,
    TxTimeoutError,
)
from fabstir_tui.engine.chain.txtypes import TxCall, raw_fields
from fabstir_tui.engine.events import Event, EventBus, Subscription
from fabstir_tui.engine.store import Store

MIN_STAKE = 10**17
MODEL = hashlib.sha256(b"tx sender test model").digest()
PAYOUT = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # anvil account 3
SINK = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"  # anvil account 4
PRICE_IN_ETH = "0x" + "0" * 40  # register's priceToken: address(0) = ETH
ORACLE_FEE = 123_456_789_000  # what the stand-in GasPriceOracle charges for any transaction

anvil_key = functools.cache(anvil_account)  # anvil's public test accounts


# --- test doubles (runtime bytecode installed with anvil_setCode) ---------------------------


def returning_code(value: int) -> str:
    """Test double: returns one fixed uint256 for any call (a stand-in GasPriceOracle)."""
    return "0x7f" + value.to_bytes(32, "big").hex() + "5f5260205ff3"  # mstore(0,v) return(0,32)


def reverting_code(data: bytes) -> str:
    """Test double: reverts with exactly `data` for any call."""
    code = ""
    for offset in range(0, len(data), 32):
        chunk = data[offset : offset + 32].ljust(32, b"\0")
        code += f"7f{chunk.hex()}60{offset:02x}52"  # mstore(offset, chunk)
    return f"0x{code}60{len(data):02x}5ffd"  # revert(0, len)


def error_string(message: str) -> bytes:
    return bytes.fromhex("08c379a0") + encode(["string"], [message])


def panic(code: int) -> bytes:
    return bytes.fromhex("4e487b71") + encode(["uint256"], [code])


# --- fixtures --------------------------------------------------------------------------------


@dataclass
class Chain:
    anvil: Anvil
    deployment: Deployment

    def sender(
        self,
        store: Store,
        index: int = 1,
        bus: EventBus | None = None,
        retries: bool = True,
        url: str | None = None,
        **chain: Any,
    ) -> TxSender:
        """A fresh sender (its own web3 client) on this chain, or through a relay at `url`;
        `chain` overrides ChainSection."""
        url = url or self.anvil.http_url
        # OwnSessionHTTPProvider: web3's own session cache can leak a process-wide lock.
        # force_close as web3's sessions: a stopped anvil is then a refused connection.
        provider = OwnSessionHTTPProvider(url, force_close=True)
        if not retries:
            provider = OwnSessionHTTPProvider(
                url, force_close=True, exception_retry_configuration=None
            )
        w3 = AsyncWeb3(provider)
        settings = ChainSection(chain_id=31337, rpc_urls=[url], **chain)
        return TxSender(w3, anvil_key(index), store, settings, bus)

    def nodes(self, sender: TxSender) -> Any:
        abi = load_artifact("NodeRegistry").abi
        address = Web3.to_checksum_address(self.deployment.node_registry)
        return sender.w3.eth.contract(address=address, abi=abi)

    def automine(self, on: bool) -> None:
        self.anvil.rpc("evm_setAutomine", [on])

    def tx(self, tx_hash: str) -> Any:
        return self.anvil.rpc("eth_getTransactionByHash", [tx_hash])


@pytest.fixture
def chain() -> Iterator[Chain]:
    """A fresh anvil per test: these tests switch automine off and move the base fee."""
    with Anvil(chain_id=31337, accounts=5) as node:
        w3 = Web3(Web3.HTTPProvider(node.http_url))
        params = DeployParams(min_stake_wei=MIN_STAKE, approved_models=((MODEL, "test"),))
        yield Chain(node, deploy_suite(w3, str(w3.eth.accounts[0]), params))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "node.db")
    yield db
    db.close()


def journal_rows(store: Store) -> list[tuple[str, int, str]]:
    """(hash, nonce, status) of every journaled transaction, by nonce."""
    rows = store.query("SELECT hash, nonce, status FROM tx_journal ORDER BY nonce, created_at")
    return [(str(h), int(str(n)), str(st)) for h, n, st in rows]


def journaled(sender: TxSender, tx_hash: str) -> JournalEntry:
    entry = sender.journal.get(tx_hash)
    assert entry is not None, f"{tx_hash} is not journaled"
    return entry


SEND_ETH = TxCall(to=SINK)  # a plain transfer: the cheapest transaction there is


async def next_events(sub: Subscription, count: int) -> list[Event]:
    """The next `count` events (already published when this is called)."""
    return [await asyncio.wait_for(sub.get(), timeout=10) for _ in range(count)]


# --- concurrency and nonces --------------------------------------------------------------------


async def test_twenty_concurrent_sends_land_with_consecutive_nonces(
    chain: Chain, store: Store
) -> None:
    bus = EventBus()
    sub = bus.subscribe(TxSubmitted, TxSettled)
    sender = chain.sender(store, bus=bus)
    await sender.start()
    first = int(chain.anvil.rpc("eth_getTransactionCount", [sender.address, "pending"]), 16)
    sent = await asyncio.gather(
        *(sender.send(SEND_ETH, value=i + 1, label=f"pay {i}") for i in range(20))
    )
    outcomes = await asyncio.gather(*(sender.wait(s.tx_hash) for s in sent))
    assert [o.status for o in outcomes] == ["mined"] * 20
    assert sorted(s.nonce for s in sent) == list(range(first, first + 20))
    rows = journal_rows(store)
    assert [r[1] for r in rows] == list(range(first, first + 20))
    assert {r[2] for r in rows} == {"mined"}
    for s in sent:  # the chain agrees: each hash carries the nonce the journal gave it
        assert int(chain.tx(s.tx_hash)["nonce"], 16) == s.nonce
    latest = int(chain.anvil.rpc("eth_getTransactionCount", [sender.address, "latest"]), 16)
    assert latest == first + 20
    events = await next_events(sub, 40)
    assert sum(isinstance(e, TxSubmitted) for e in events) == 20
    settled = [e for e in events if isinstance(e, TxSettled)]
    assert {e.status for e in settled} == {"mined"} and all(e.fee_wei > 0 for e in settled)


async def test_a_refused_broadcast_is_journaled_and_gives_its_nonce_back(
    chain: Chain, store: Store
) -> None:
    sender = chain.sender(store)
    await sender.start()
    too_much = 10**30  # more ETH than the account holds; explicit gas skips the estimate
    with pytest.raises(TxRejectedError, match="(?i)insufficient funds") as refused:
        await sender.send(SEND_ETH, value=too_much, gas=21_000, label="overpay")
    row = sender.journal.get(refused.value.tx_hash)
    assert row is not None and row.status == "dropped"
    assert "insufficient funds" in (row.error or "").lower()
    ok = await sender.transact(SEND_ETH, value=1)
    assert ok.status == "mined" and ok.nonce == row.nonce  # the nonce came back


# --- the journal across restarts and crashes ---------------------------------------------------


async def test_a_wait_that_runs_out_of_time_leaves_the_transaction_pending(
    chain: Chain, store: Store
) -> None:
    sender = chain.sender(store)
    await sender.start()
    chain.automine(False)
    sent = await sender.send(SEND_ETH, value=4, label="stuck")
    with pytest.raises(TxTimeoutError, match="stuck .* was not mined within 0.2 s") as late:
        await sender.wait(sent.tx_hash, timeout=0.2)
    assert late.value.tx_hash == sent.tx_hash
    assert journaled(sender, sent.tx_hash).status == "pending"
    chain.anvil.mine()
    assert (await sender.wait(sent.tx_hash)).status == "mined"


async def test_restart_confirms_a_pending_transaction(chain: Chain, store: Store) -> None:
    chain.automine(False)
    first = chain.sender(store)
    await first.start()
    sent = await first.send(SEND_ETH, value=7, label="before restart")
    del first
    second = chain.sender(store)
    await second.start()
    row = second.journal.get(sent.tx_hash)
    assert row is not None and row.status == "pending" and row.broadcast_at is not None
    chain.anvil.mine()
    outcome = await second.wait(sent.tx_hash)
    assert outcome.status == "mined" and outcome.block_number is not None
    assert journaled(second, sent.tx_hash).status == "mined"
    chain.automine(True)
    after = await second.transact(SEND_ETH, value=1)
    assert after.nonce == sent.nonce + 1


async def test_a_crash_between_journal_and_broadcast_is_rebroadcast_on_start(
    chain: Chain, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = chain.sender(store)
    await first.start()
    monkeypatch.setenv("FABSTIR_CRASH_AT", "tx_after_journal")
    with pytest.raises(CrashPointReached):
        await first.send(SEND_ETH, value=9, label="crashed")
    monkeypatch.delenv("FABSTIR_CRASH_AT")
    [(tx_hash, nonce, status)] = journal_rows(store)
    assert status == "pending"
    assert chain.tx(tx_hash) is None  # journaled, never broadcast
    second = chain.sender(store)
    await second.start()
    assert chain.tx(tx_hash) is not None
    outcome = await second.wait(tx_hash)
    assert outcome.status == "mined" and outcome.nonce == nonce
    after = await second.transact(SEND_ETH, value=1)
    assert after.nonce == nonce + 1


async def test_a_journaled_nonce_taken_by_another_wallet_is_marked_dropped(
    chain: Chain, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = chain.sender(store)
    await first.start()
    monkeypatch.setenv("FABSTIR_CRASH_AT", "tx_after_journal")
    with pytest.raises(CrashPointReached):
        await first.send(SEND_ETH, value=9)
    monkeypatch.delenv("FABSTIR_CRASH_AT")
    [(tx_hash, nonce, _)] = journal_rows(store)
    # The same key, used by "another wallet", spends that nonce first.
    key = anvil_key(1)
    base = int(chain.anvil.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
    other = key.sign_transaction(
        {
            "type": 2,
            "chainId": 31337,
            "nonce": nonce,
            "to": PAYOUT,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 4 * base,
            "maxPriorityFeePerGas": 1,
        }
    )
    chain.anvil.rpc("eth_sendRawTransaction", ["0x" + other.raw_transaction.hex()])
    second = chain.sender(store)
    await second.start()
    row = second.journal.get(tx_hash)
    assert row is not None and row.status == "dropped"
    assert f"nonce {nonce} was used by a transaction this node did not journal" in (row.error or "")
    after = await second.transact(SEND_ETH, value=1)
    assert after.status == "mined" and after.nonce == nonce + 1


# --- speed-up ---------------------------------------------------------------------------------


async def test_speed_up_replaces_the_original(chain: Chain, store: Store) -> None:
    bus = EventBus()
    sub = bus.subscribe(TxSettled)
    chain.anvil.rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
    sender = chain.sender(store, bus=bus, max_fee_gwei=2.5)
    await sender.start()
    chain.automine(False)
    original = await sender.send(SEND_ETH, value=3, label="slow")
    faster = await sender.speed_up(original.tx_hash)
    assert faster.nonce == original.nonce and faster.replaces == original.tx_hash
    assert faster.max_fee_per_gas_wei * 100 >= original.max_fee_per_gas_wei * 115
    assert faster.priority_fee_wei * 100 >= original.priority_fee_wei * 115
    assert faster.max_fee_per_gas_wei <= int(2.5 * GWEI)
    with pytest.raises(FeeCapError, match="above the cap"):
        await sender.speed_up(faster.tx_hash)  # another 15 % would pass 2.5 gwei
    chain.anvil.mine()
    outcome = await sender.wait(original.tx_hash)  # follows the replacement
    assert outcome.tx_hash == faster.tx_hash and outcome.status == "mined"
    with pytest.raises(TxError, match="already mined; nothing to speed up"):
        await sender.speed_up(faster.tx_hash)
    lost = await sender.wait(original.tx_hash, follow=False)
    assert lost.status == "replaced" and lost.replaced_by == faster.tx_hash
    assert chain.anvil.rpc("eth_getTransactionReceipt", [original.tx_hash]) is None
    assert raw_fields(journaled(sender, faster.tx_hash).raw_tx).value_wei == 3
    events = await next_events(sub, 2)
    assert {(e.tx_hash, e.status, e.replaced_by) for e in events if isinstance(e, TxSettled)} == {
        (faster.tx_hash, "mined", ""),
        (original.tx_hash, "replaced", faster.tx_hash),
    }


# --- fees ---------------------------------------------------------------------------------------


async def test_max_fee_is_twice_the_base_fee_plus_tip_under_the_cap(
    chain: Chain, store: Store
) -> None:
    chain.anvil.rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
    sender = chain.sender(store, max_fee_gwei=50, priority_fee_gwei=0.001)
    preview = await sender.preview(SEND_ETH, value=5)
    assert preview.base_fee_wei == GWEI
    assert preview.priority_fee_wei == 10**6
    assert preview.max_fee_per_gas_wei == 2 * GWEI + 10**6 and not preview.fee_capped
    assert preview.gas_estimate == 21_000 and preview.gas_limit > preview.gas_estimate
    assert preview.l1_fee_wei == 0
    assert preview.total_max_cost_wei == 5 + preview.gas_limit * preview.max_fee_per_gas_wei


async def test_the_cap_limits_the_max_fee_and_a_cap_below_base_fee_is_refused(
    chain: Chain, store: Store
) -> None:
    chain.anvil.rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
    sender = chain.sender(store, max_fee_gwei=1.5)
    preview = await sender.preview(SEND_ETH, value=1)
    assert preview.max_fee_per_gas_wei == 1_500_000_000 and preview.fee_capped
    sent = await sender.send(SEND_ETH, value=1, preview=preview)
    signed = raw_fields(journaled(sender, sent.tx_hash).raw_tx)
    assert signed.max_fee_per_gas_wei == 1_500_000_000
    assert (await sender.wait(sent.tx_hash)).status == "mined"
    chain.anvil.rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * GWEI)])
    with pytest.raises(FeeCapError) as refused:
        await sender.preview(SEND_ETH, value=1)
    text = str(refused.value)
    assert "1.5 gwei" in text and "100 gwei" in text and "chain.max_fee_gwei" in text


async def test_preview_and_outcome_include_the_l1_fee_from_the_oracle(
    chain: Chain, store: Store
) -> None:
    chain.anvil.rpc("anvil_setCode", [GAS_PRICE_ORACLE, returning_code(ORACLE_FEE)])
    sender = chain.sender(store, l1_fee="on")
    preview = await sender.preview(SEND_ETH, value=11)
    assert preview.l1_fee_wei == ORACLE_FEE
    l2 = preview.gas_limit * preview.max_fee_per_gas_wei
    assert preview.total_max_cost_wei == 11 + l2 + ORACLE_FEE
    outcome = await sender.transact(SEND_ETH, value=11, preview=preview)
    assert outcome.l1_fee_wei == ORACLE_FEE
    assert outcome.gas_used is not None and outcome.effective_gas_price_wei is not None
    assert outcome.fee_wei == outcome.gas_used * outcome.effective_gas_price_wei + ORACLE_FEE
    off = chain.sender(store, l1_fee="off")
    assert (await off.preview(SEND_ETH, value=11)).l1_fee_wei == 0
    off_outcome = await off.transact(SEND_ETH, value=11)
    assert off_outcome.l1_fee_wei == 0
    auto = chain.sender(store, l1_fee="auto")  # chain 31337 is not an OP-stack chain we know
    assert (await auto.preview(SEND_ETH)).l1_fee_wei == 0


async def test_l1_fee_on_without_an_oracle_says_what_to_change(chain: Chain, store: Store) -> None:
    sender = chain.sender(store, l1_fee="on")
    with pytest.raises(TxError, match='chain.l1_fee = "off"'):
        await sender.preview(SEND_ETH)


# --- reverts ---------------------------------------------------------------------------------


async def test_preview_names_the_contract_and_decodes_the_arguments(
    chain: Chain, store: Store
) -> None:
    sender = chain.sender(store)  # no addresses configured: the name comes from the ABI
    call = chain.nodes(sender).functions.register([MODEL], [2_000], PRICE_IN_ETH, PAYOUT, "{}")
    preview = await sender.preview(call, value=MIN_STAKE)
    assert (preview.contract, preview.function) == ("NodeRegistry", "register")
    assert preview.address == chain.deployment.node_registry
    assert [(a.name, a.type, a.display) for a in preview.args] == [
        ("models", "bytes32[]", f"[0x{MODEL.hex()}]"),
        ("pricesPerMillion", "uint256[]", "[2000]"),
        ("priceToken", "address", PRICE_IN_ETH),
        ("payout", "address", PAYOUT),
        ("metadata", "string", '"{}"'),
    ]
    outcome = await sender.transact(call, value=MIN_STAKE, preview=preview)
    assert outcome.status == "mined" and outcome.label == "NodeRegistry.register"


async def test_a_custom_error_is_decoded_with_its_arguments(chain: Chain, store: Store) -> None:
    sender = chain.sender(store, node_registry=chain.deployment.node_registry)
    call = chain.nodes(sender).functions.register([], [], PRICE_IN_ETH, PAYOUT, "")
    with pytest.raises(TxRevertedError) as reverted:
        await sender.preview(call, value=5)
    assert reverted.value.reason == f"NodeRegistry.StakeTooLow(sent=5, minimum={MIN_STAKE})"
    assert str(reverted.value).startswith("NodeRegistry.register would fail: ")
    assert not journal_rows(store)  # nothing was signed


async def test_error_string_and_panic_are_decoded(chain: Chain, store: Store) -> None:
    says_no = "0x000000000000000000000000000000000000e001"
    overflows = "0x000000000000000000000000000000000000e002"
    chain.anvil.rpc("anvil_setCode", [says_no, reverting_code(error_string("not today"))])
    chain.anvil.rpc("anvil_setCode", [overflows, reverting_code(panic(0x11))])
    sender = chain.sender(store)
    with pytest.raises(TxRevertedError) as refused:
        await sender.preview(TxCall(to=says_no, data=b"\x12\x34\x56\x78"))
    assert refused.value.reason == 'Error("not today")'
    with pytest.raises(TxRevertedError) as panicked:
        await sender.preview(TxCall(to=overflows, data=b"\x12\x34\x56\x78"))
    assert panicked.value.reason == "Panic(0x11): arithmetic overflow or underflow"


async def test_a_mined_failure_is_replayed_for_its_reason(chain: Chain, store: Store) -> None:
    bus = EventBus()
    sub = bus.subscribe(TxSettled)
    sender = chain.sender(store, bus=bus)
    call = chain.nodes(sender).functions.register([], [], PRICE_IN_ETH, PAYOUT, "")
    outcome = await sender.transact(call, value=5, gas=200_000, label="register")
    assert outcome.status == "failed" and outcome.block_number is not None
    assert outcome.error == f"NodeRegistry.StakeTooLow(sent=5, minimum={MIN_STAKE})"
    assert outcome.fee_wei > 0
    with pytest.raises(TxFailedError, match="StakeTooLow"):
        outcome.raise_for_failure()
    [event] = await next_events(sub, 1)
    assert isinstance(event, TxSettled) and event.status == "failed"
    assert event.error == outcome.error
    says_no = "0x000000000000000000000000000000000000e001"
    chain.anvil.rpc("anvil_setCode", [says_no, reverting_code(error_string("closed"))])
    failed = await sender.transact(TxCall(to=says_no, data=b"\x01"), gas=60_000)
    assert failed.status == "failed" and failed.error == 'Error("closed")'


# --- the RPC going away ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_dead_rpc_url_gives_a_readable_error(store: Store) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    w3 = AsyncWeb3(OwnSessionHTTPProvider(url, force_close=True))
    sender = TxSender(w3, anvil_key(1), store, ChainSection(chain_id=31337, rpc_urls=[url]))
    with pytest.raises(RpcUnavailableError) as down:
        await sender.start()
    text = str(down.value)
    assert url in text and "connection refused" in text and "chain.rpc_urls" in text
    with pytest.raises(RpcUnavailableError, match="cannot reach the chain RPC"):
        await sender.send(SEND_ETH, value=1)
    assert not journal_rows(store)
    with pytest.raises(TxError, match="not in this node's transaction journal"):
        await sender.wait("0x" + "ab" * 32)


async def test_a_broadcast_that_cannot_connect_is_dropped_and_gives_its_nonce_back(
    chain: Chain, store: Store
) -> None:
    sender = chain.sender(store, retries=False)  # one attempt: a refusal proves nothing left
    await sender.start()
    preview = await sender.preview(SEND_ETH, value=1)
    nonce = sender.nonces.next
    chain.anvil.stop()  # the RPC dies between the operator's confirm and the broadcast
    with pytest.raises(RpcUnavailableError, match="Nothing was sent") as down:
        await sender.send(SEND_ETH, value=1, preview=preview)
    assert "connection refused" in str(down.value)
    [(_, journaled_nonce, status)] = journal_rows(store)
    assert status == "dropped" and journaled_nonce == nonce
    assert sender.nonces.next == nonce  # given back: the node certainly never saw it


async def test_a_refused_connection_after_retries_is_uncertain_and_keeps_the_nonce(
    chain: Chain, store: Store
) -> None:
    sender = chain.sender(store)  # web3's default: eth_sendRawTransaction is retried
    await sender.start()
    preview = await sender.preview(SEND_ETH, value=1)
    nonce = sender.nonces.next
    assert nonce is not None
    chain.anvil.stop()
    with pytest.raises(TxBroadcastUncertain, match="may not have reached the node"):
        await sender.send(SEND_ETH, value=1, preview=preview)
    [(_, journaled_nonce, status)] = journal_rows(store)
    assert status == "pending" and journaled_nonce == nonce
    assert sender.nonces.next == nonce + 1


async def test_a_broadcast_cut_off_mid_way_stays_pending_and_is_rebroadcast(
    chain: Chain, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = chain.sender(store)
    await sender.start()
    real_send = sender.w3.eth.send_raw_transaction
    attempts: list[object] = []

    async def lost_in_transit(raw: Any) -> Any:
        """Test double: the first request times out before reaching the node."""
        attempts.append(raw)
        if len(attempts) == 1:
            raise TimeoutError
        return await real_send(raw)

    monkeypatch.setattr(sender.w3.eth, "send_raw_transaction", lost_in_transit)
    with pytest.raises(TxBroadcastUncertain) as cut:
        await sender.send(SEND_ETH, value=2, label="cut off")
    row = sender.journal.get(cut.value.tx_hash)
    assert row is not None and row.status == "pending"
    assert "broadcast uncertain" in (row.error or "")
    outcome = await sender.wait(cut.value.tx_hash)
    assert outcome.status == "mined" and len(attempts) == 2
    after = await sender.transact(SEND_ETH, value=1)
    assert after.nonce == outcome.nonce + 1  # the uncertain nonce was kept, not reused


# --- answers that are not refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [(-32603, "internal error"), (-32005, "limit exceeded"), (-32000, "request timed out")],
)
async def test_an_ambiguous_error_after_the_node_took_it_stays_pending_and_is_mined(
    chain: Chain, store: Store, code: int, message: str
) -> None:
    relay = await AmbiguousSendRpc(
        chain.anvil.http_url, forward=True, code=code, message=message
    ).start()
    try:
        sender = chain.sender(store, url=relay.url, retries=False)
        await sender.start()
        nonce = sender.nonces.next
        assert nonce is not None
        with pytest.raises(TxBroadcastUncertain, match="may not have reached") as unsure:
            await sender.send(SEND_ETH, value=3, label="load balanced")
        assert relay.answered and "result" in relay.answered[0]  # anvil did take it
        row = journaled(sender, unsure.value.tx_hash)
        assert row.status == "pending" and "broadcast uncertain" in (row.error or "")
        assert message in (row.error or "")
        assert sender.nonces.next == nonce + 1  # kept, not given back
        outcome = await sender.wait(unsure.value.tx_hash)
        assert outcome.status == "mined" and outcome.nonce == nonce
        after = await sender.transact(SEND_ETH, value=1)
        assert after.status == "mined" and after.nonce == nonce + 1
    finally:
        await relay.close()


async def test_an_ambiguous_error_that_lost_the_transaction_is_rebroadcast_and_mined(
    chain: Chain, store: Store
) -> None:
    relay = await AmbiguousSendRpc(chain.anvil.http_url, forward=False).start()
    try:
        sender = chain.sender(store, url=relay.url, retries=False)
        await sender.start()
        nonce = sender.nonces.next
        assert nonce is not None
        with pytest.raises(TxBroadcastUncertain) as unsure:
            await sender.send(SEND_ETH, value=5, label="lost by the balancer")
        tx_hash = unsure.value.tx_hash
        assert chain.tx(tx_hash) is None  # anvil never saw it
        assert journaled(sender, tx_hash).status == "pending"
        assert sender.nonces.next == nonce + 1
        outcome = await sender.wait(tx_hash)  # looks for it, rebroadcasts it
        assert outcome.status == "mined" and outcome.nonce == nonce
        assert relay.sends == 2
    finally:
        await relay.close()


async def test_a_certain_refusal_through_a_relay_is_dropped_and_its_nonce_reused(
    chain: Chain, store: Store
) -> None:
    relay = await AmbiguousSendRpc(chain.anvil.http_url, forward=True, times=0).start()
    try:
        sender = chain.sender(store, url=relay.url, retries=False)
        await sender.start()
        with pytest.raises(TxRejectedError, match="(?i)insufficient funds") as refused:
            await sender.send(SEND_ETH, value=10**30, gas=21_000, label="overpay")
        row = journaled(sender, refused.value.tx_hash)
        assert row.status == "dropped"
        ok = await sender.transact(SEND_ETH, value=1)
        assert ok.status == "mined" and ok.nonce == row.nonce
    finally:
        await relay.close()
