"""Cells and lines of the Proofs screen, apart from widgets so one job's commitments read the same
in the table and the detail pane (and can be tested bare)."""

from __future__ import annotations

from fabstir_tui.engine.jobs.proof_views import ProofTx, ProofView
from fabstir_tui.ui.format import DASH, clock, ellipsis, token_amount
from fabstir_tui.ui.job_format import TokenUnits, compact_amount, state_label

NATURE_LINE = (
    "Signed receipts + Merkle root on-chain, checked by re-execution within the dispute "
    "window — not a zero-knowledge proof."
)
# (label, key, width): fixed widths so 80 columns hold every column (DESIGN §8).
PROOF_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("id", "id", 4),
    ("state", "state", 9),
    ("tok", "tokens", 5),
    ("receipt", "receipt", 8),
    ("root", "root", 8),
    ("submit tx", "submit", 12),
    ("paid", "paid", 8),
    ("verify", "verify", 8),
)
_VERDICT_CELLS = {
    "verifying": "checking",
    "match": "match",
    "mismatch": "MISMATCH",
    "error": "error",
}


def hash_prefix(value: str | None, width: int = 8) -> str:
    """The start of a hash, as git shows commits: enough to tell rows apart."""
    return value[:width] if value else DASH


def tokens_of(view: ProofView) -> int | None:
    """What was submitted (and is paid on); before that, what the archive counted."""
    if view.tokens_used is not None:
        return view.tokens_used
    if view.prompt_tokens is None or view.completion_tokens is None:
        return None
    return view.prompt_tokens + view.completion_tokens


def tx_cell(tx: ProofTx | None, width: int) -> str:
    if tx is None:
        return DASH
    return ellipsis(f"{tx.tx_hash[:6]} {tx.status}", width)


def verdict_cell(view: ProofView) -> str:
    return DASH if view.verify_status is None else _VERDICT_CELLS[view.verify_status]


def proof_cells(view: ProofView, units: TokenUnits) -> tuple[str, ...]:
    """One job in the Proofs table."""
    widths = {key: width for _, key, width in PROOF_COLUMNS}
    tokens = tokens_of(view)
    state = state_label(view.state) if view.state is not None else "archived"
    return (
        ellipsis(view.job_id, widths["id"]),
        ellipsis(state, widths["state"]),
        DASH if tokens is None else ellipsis(f"{tokens:,}", widths["tokens"]),
        hash_prefix(view.receipt_hash, widths["receipt"]),
        hash_prefix(view.receipt_root, widths["root"]),
        tx_cell(view.tx("submit"), widths["submit"]),
        DASH if view.paid is None else compact_amount(view.paid, units.decimals, widths["paid"]),
        verdict_cell(view),
    )


def _tx_line(tx: ProofTx) -> list[str]:
    block = f", block {tx.block:,}" if tx.block is not None else ""
    return [f"{tx.action:<12} {tx.status}{block}", f"  {tx.tx_hash}"]


def proof_detail_lines(view: ProofView, units: TokenUnits) -> list[str]:
    """Every commitment of a job with its full hashes, the txs that carried them, the payment."""
    state = view.state.value if view.state is not None else "not in the job book"
    tokens = tokens_of(view)
    counts = DASH
    if view.prompt_tokens is not None and view.completion_tokens is not None:
        counts = f"{view.prompt_tokens:,} prompt + {view.completion_tokens:,} completion"
    lines = [
        f"state        {state} (chain: {view.chain_status or 'not seen'})",
        f"kind         {view.key.kind.value} on chain {view.key.chain_id}",
        f"tokens       {DASH if tokens is None else f'{tokens:,}'} ({counts})",
        "model id",
        f"  {view.model_id or DASH}",
        "signer (as the receipt names it; verify checks the signature)",
        f"  {view.signer or DASH}",
        "receipt hash (EIP-712 digest of the signed receipt)",
        f"  {view.receipt_hash or DASH + ' (no archived receipt)'}",
        "receipt root (the Merkle root submitted on-chain)",
        f"  {view.receipt_root or DASH + ' (not submitted)'}",
        "output hash",
        f"  {view.output_hash or DASH}",
    ]
    for tx in view.txs:
        lines += _tx_line(tx)
    if not view.txs:
        lines.append(f"transactions {DASH} (none signed by this node)")
    if view.paid is not None:
        lines.append(f"paid         {token_amount(view.paid, units.decimals, units.symbol)}")
        if view.settled_tx:
            lines.append(f"  settled in {view.settled_tx}")
    else:
        lines.append(f"paid         {DASH} (paid after the dispute window, on release)")
    if view.archived and view.finished_at is not None:
        lines.append(f"archived     yes, finished {clock(view.finished_at)}")
    else:
        lines.append("archived     no: cannot be re-executed here (swept or never run here)")
    return lines


def verify_lines(view: ProofView) -> list[str]:
    """The last verify report of this session, or what to press."""
    if view.verify_status == "verifying":
        return ["verifying… (re-running the job in a worker process)"]
    if view.verify_lines:
        return list(view.verify_lines)
    if not view.archived:
        return ["not verifiable here: there is no archive entry for this job"]
    return ["not verified this session — press v to re-run it against its receipt"]
