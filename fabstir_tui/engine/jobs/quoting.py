"""Gathers what a job quote needs from the running node (price, fee, gas, speed, memory)
and hands it to the pure `make_quote`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.engine.chain.txerrors import TxError
from fabstir_tui.engine.jobs.market_sync import market_row
from fabstir_tui.engine.jobs.quote import make_quote
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind
from fabstir_tui.engine.jobs.views import JobCommandError, JobQuote

if TYPE_CHECKING:
    from fabstir_tui.engine.jobs.pipeline import JobPipeline
    from fabstir_tui.engine.node import Node

# Our own past submit and release txs tell what the rest of a job costs in gas.
_LATER_TXS = ("submit job", "release job")


async def quote_for(node: Node, pipeline: JobPipeline, key: JobKey) -> JobQuote:
    """The quote for one job; chain reads that fail leave their figure unknown, not an error."""
    record = pipeline.book.get(key)
    if record is None:
        raise JobCommandError(f"job {key.job_id} is not in the job book")
    view = pipeline.views.view(record)
    # A session has no market row (its deposit and price are in the view); no claim to preview.
    row = market_row(pipeline.store, key.job_id) if key.kind == JobKind.OPEN else None
    chain = node.chain
    refusal = node.chain_refusal()
    our_price: int | None = None
    fee_bps = chain.status.fee_bps
    gas: int | None = None
    symbol, decimals = "ETH", 18
    pool = chain.pool
    if pool is not None and row is None and view.token:
        try:
            symbol, decimals = await chain.contracts.token_info(pool.web3(), view.token)
        except Exception as exc:  # an RPC hiccup: the figure is shown in base units
            node.log("debug", "jobs", f"quote: could not read the token: {exc}")
    if pool is not None and row is not None:
        w3 = pool.web3()
        try:
            symbol, decimals = await chain.contracts.token_info(w3, row.token)
            nodes = chain.contracts.contract(w3, "NodeRegistry")
            model = bytes.fromhex(row.model_id[2:])
            price = int(await nodes.functions.priceOf(chain.address, model).call())
            our_price = price or None
        except Exception as exc:  # an RPC hiccup: the figure is shown as unknown
            node.log("debug", "jobs", f"quote: could not read prices: {exc}")
        sender = chain.sender
        if sender is not None and refusal is None:
            market = chain.contracts.contract(sender.w3, "JobMarketplace")
            try:
                preview = await sender.preview(market.functions.claimJob(int(key.job_id)))
                gas = preview.gas_estimate * (preview.base_fee_wei + preview.priority_fee_wei)
                gas += _later_gas(node) * (preview.base_fee_wei + preview.priority_fee_wei)
            except TxError as exc:
                refusal = f"the claim would fail: {exc}"
    on_disk = [m for m in node.list_models() if "0x" + (m.sha256 or "") == view.model_id]
    speeds = [node.models.tokens_per_s(m.path) for m in on_disk]
    speed = next((s for s in speeds if s is not None), None)
    model_bytes = on_disk[0].size_bytes if on_disk else None
    return make_quote(
        view,
        our_price=our_price,
        fee_bps=fee_bps,
        gas_estimate_wei=gas,
        tokens_per_s=speed,
        model_bytes=model_bytes,
        free_bytes=_free_bytes(node),
        now=pipeline.now(),
        token_symbol=symbol,
        token_decimals=decimals,
        refusal=refusal,
    )


def _later_gas(node: Node) -> int:
    """Gas our last submit and release used (0 for one not measured yet)."""
    sender = node.chain.sender
    if sender is None:
        return 0
    total = 0
    recent = sender.journal.recent(200)
    for prefix in _LATER_TXS:
        used = next((e.gas_used for e in recent if e.label.startswith(prefix) and e.gas_used), None)
        total += used or 0
    return total


def _free_bytes(node: Node) -> int | None:
    """Free GPU memory when there is a GPU, else free host memory."""
    gpu = node.telemetry.latest_gpu()
    if gpu is not None and gpu.available and gpu.devices:
        device = gpu.devices[0]
        if device.memory_total_bytes is not None and device.memory_used_bytes is not None:
            return device.memory_total_bytes - device.memory_used_bytes
    host = node.telemetry.latest_host()
    return host.ram_total_bytes - host.ram_used_bytes if host is not None else None
