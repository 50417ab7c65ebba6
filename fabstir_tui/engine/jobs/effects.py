"""Drives a job's pending on-chain effect (claim, submit, release, unclaim) to an end.

The book already holds the effect as pending (written before anything is signed). The
driver finds out whether its transaction exists — by the hash the book recorded, else by its
label in the tx journal (a crash between journaling and recording) — and waits for it;
only when neither exists and the chain does not show the effect done is it signed and sent,
with the hash tied to the effect before the broadcast. So a restart at any point confirms
what was sent instead of sending it again: nothing is claimed or submitted twice.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fabstir_tui.engine.chain.sender import TxSender
from fabstir_tui.engine.chain.txerrors import (
    FeeCapError,
    TxBroadcastUncertain,
    TxRejectedError,
    TxRevertedError,
)
from fabstir_tui.engine.chain.txtypes import TxOutcome
from fabstir_tui.engine.jobs.book import JobBook
from fabstir_tui.engine.jobs.market_sync import MarketRow
from fabstir_tui.engine.jobs.records import JobKey, PendingEffect
from fabstir_tui.engine.jobs.states import JobKind, JobState

CRASH_ENV = "FABSTIR_CRASH_AT"
S = JobState

# What the chain shows once each effect has happened (market_jobs status, ours as host).
DONE_WHEN: dict[str, Callable[[MarketRow, str], bool]] = {
    "claim": lambda row, me: row.host.lower() == me and row.status != "open",
    "submit": lambda row, me: row.status not in ("open", "claimed"),
    "release": lambda row, me: row.status in ("released", "refunded"),
    "unclaim": lambda row, me: row.host.lower() != me or row.status == "open",
}


def die_at(point: str) -> None:
    """Tests only (DESIGN §11.12): SIGKILL this process at a named point of the lifecycle when
    FABSTIR_CRASH_AT names it, so crash tests see exactly what a power cut leaves behind."""
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def tx_label(action: str, job_id: str) -> str:
    """The journal label of a job's tx: how a restart finds a tx whose hash was not recorded."""
    return f"{action} job {job_id}"


@dataclass(frozen=True, slots=True)
class EffectEnd:
    """How an effect ended: ok (mined, or seen done on-chain), or not, with the reason."""

    ok: bool
    tx_hash: str | None
    fee_wei: int
    error: str

    def result(self) -> dict[str, object]:
        doc: dict[str, object] = {"status": "ok" if self.ok else "failed", "fee_wei": self.fee_wei}
        if self.tx_hash:
            doc["tx_hash"] = self.tx_hash
        if self.error:
            doc["error"] = self.error
        return doc


class EffectDriver:
    """Sends and confirms the pipeline's transactions through the node's one TxSender."""

    def __init__(
        self, book: JobBook, market: Any, host: str, calls: Callable[[PendingEffect], Any]
    ) -> None:
        self.book = book
        self.market = market  # the JobMarketplace contract object (AsyncWeb3)
        self.host = host.lower()
        self._session_call = calls

    def call_for(self, pending: PendingEffect) -> Any:
        """The contract call an effect stands for; its arguments come from the effect."""
        if pending.key.kind != JobKind.OPEN:
            return self._session_call(pending)
        job_id = int(pending.key.job_id)
        fn = self.market.functions
        action = pending.effect.action
        if action == "claim":
            return fn.claimJob(job_id)
        if action == "unclaim":
            return fn.unclaimJob(job_id)
        if action == "release":
            return fn.releasePayment(job_id)
        if action == "submit":
            d = pending.effect.detail
            return fn.submitResult(
                job_id,
                int(str(d["tokens_used"])),
                bytes.fromhex(str(d["output_hash"])[2:]),
                bytes.fromhex(str(d["receipt_root"])[2:]),
            )
        raise ValueError(f"unknown job effect {action!r}")

    async def drive(
        self, sender: TxSender, pending: PendingEffect, already_done: Callable[[], bool]
    ) -> EffectEnd:
        """Carry the effect to an end: confirm a tx already signed, else send one (once)."""
        key = pending.key
        tx_hash = pending.effect.tx_hash
        if tx_hash is None:
            label = tx_label(pending.effect.action, key.job_id)
            found = sender.journal.by_label(
                sender.address, sender.chain_id, label, pending.created_at - 1
            )
            live = [e for e in found if e.status in ("pending", "mined")]
            if live:
                tx_hash = live[0].hash
                self.book.attach_tx(key, tx_hash)
        if tx_hash is not None:
            outcome = await sender.wait(tx_hash)
            if outcome.status != "dropped":
                return _end(outcome)
            self.book.forget_tx(key)  # never mined: the effect is still wanted
        if already_done():
            return EffectEnd(True, None, 0, "")
        return await self._send(sender, pending)

    async def _send(self, sender: TxSender, pending: PendingEffect) -> EffectEnd:
        key = pending.key
        label = tx_label(pending.effect.action, key.job_id)
        die_at(f"before_{pending.effect.action}_sent")

        def tie(tx_hash: str) -> None:
            die_at(f"after_{pending.effect.action}_journaled")  # signed, kept, not yet tied
            self.book.attach_tx(key, tx_hash)

        try:
            sent = await sender.send(self.call_for(pending), 0, label, on_journaled=tie)
            tx_hash = sent.tx_hash
        except TxBroadcastUncertain as exc:  # journaled and tied: waiting rebroadcasts it
            tx_hash = exc.tx_hash
        except (TxRevertedError, TxRejectedError, FeeCapError) as exc:
            # Refused before signing (it would revert) or by the node: nothing was sent.
            # An unreachable RPC or a timeout raises on: the pipeline retries next round.
            return EffectEnd(False, None, 0, str(exc))
        die_at(f"after_{pending.effect.action}_sent")
        return _end(await sender.wait(tx_hash))


def _end(outcome: TxOutcome) -> EffectEnd:
    return EffectEnd(outcome.ok, outcome.tx_hash, outcome.fee_wei, outcome.error or "")


def key_text(key: JobKey) -> str:
    """Short operator wording for logs: 'job 12'."""
    return f"{key.kind} {key.job_id}"
