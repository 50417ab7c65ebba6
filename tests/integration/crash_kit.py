"""Crash tests' tools: the node as a subprocess (`fabstir-tui --headless`, loading its model
through inference.load_at_start) that may be told to SIGKILL
itself at a lifecycle point (FABSTIR_CRASH_AT), its config as a TOML file, what the chain
says about one job, and what the node's SQLite says once it has stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_kit import PASSPHRASE, Rig

CRASH_ENV = "FABSTIR_CRASH_AT"
ETH = "0x0000000000000000000000000000000000000000"
_ADDR = re.compile(r"libp2p host \S+ on .*?(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)")


def write_config(rig: Rig, root: Path, **jobs: object) -> Path:
    """The TOML a node operator would write for this rig: our own data dir, P2P on
    127.0.0.1:0 without the DHT, the chain polled every 0.1 s, and the [jobs] given."""
    d = rig.deployment
    data = rig.data_dir

    def value(v: object) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [
        "[paths]",
        f"data_dir = {value(str(data))}",
        f"cache_dir = {value(str(data.parent / 'cache'))}",
        f"models_dirs = [{value(str(rig.models_dir))}]",
        "[inference]",
        "threads = 1",
        f"load_at_start = [{value(str(next(rig.models_dir.glob('*.gguf'))))}]",
        "[telemetry]",
        'gpu_backend = "none"',
        "[chain]",
        f"chain_id = {d.chain_id}",
        f"rpc_urls = [{value(rig.anvil.http_url)}]",
        f"node_registry = {value(d.node_registry)}",
        f"model_registry = {value(d.model_registry)}",
        f"job_marketplace = {value(d.job_marketplace)}",
        f"host_earnings = {value(d.host_earnings)}",
        f"start_block = {d.start_block}",
        "poll_interval_s = 0.1",
        f"keystore = {value(str(data / 'keystore.json'))}",
        "[p2p]",
        "enabled = true",
        'listen_addrs = ["/ip4/127.0.0.1/tcp/0"]',
        "dht = false",
        "[jobs]",
        *(f"{name} = {value(v)}" for name, v in jobs.items()),
        "",
    ]
    path = root / "node.toml"
    path.write_text("\n".join(lines))
    secret = root / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    return path


@dataclass
class NodeProcess:
    """One node on one data dir, started and restarted as separate processes (one log each)."""

    config: Path
    root: Path
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, crash_at: str | None = None) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FABSTIR_PASSPHRASE_FILE": str(self.root / "passphrase"),
        }
        env.pop(CRASH_ENV, None)
        if crash_at is not None:
            env[CRASH_ENV] = crash_at
        log = self.root / f"node-{len(self.runs)}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fabstir_tui.cli",
                    "--config",
                    str(self.config),
                    "--headless",
                ],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env=env,
            )
        self.runs.append(proc)
        self.logs.append(log)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.runs[-1]

    def log_text(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def all_logs(self) -> str:
        parts = [
            f"--- run {i} ---\n{log.read_text(errors='replace')}" for i, log in enumerate(self.logs)
        ]
        return "\n".join(parts)

    def addr(self) -> str | None:
        """The running process's 127.0.0.1 multiaddr once it has logged it."""
        match = _ADDR.search(self.log_text())
        return match.group(1) if match else None

    def stop(self, limit_s: float = 30.0) -> int:
        """SIGTERM (a clean stop), SIGKILL only as a safety net; the exit code."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)

    def kill_all(self) -> None:
        """Teardown: every process this object started (by its handle), if still alive."""
        for proc in self.runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class ChainFacts:
    """What the chain says happened to one job and what our host key sent."""

    claimed_by: list[str]
    unclaimed_by: list[str]
    submitted: list[dict[str, Any]]
    released: list[dict[str, Any]]
    credited: list[int]
    host_calls: list[str]  # function names of the host's txs to the marketplace, in order
    host_failed: int  # host txs (any target) whose receipt says reverted
    balance: int  # HostEarnings balance of the host in ETH


def chain_facts(rig: Rig, job_id: int, from_block: int) -> ChainFacts:
    """Read every event of this job and every tx the host sent since `from_block`."""
    market, earnings = rig.market, rig.earnings
    span = {"from_block": from_block, "to_block": "latest"}
    one_job = {"jobId": job_id}

    def logs(event: Any, **filters: Any) -> list[Any]:
        return list(event.get_logs(argument_filters=filters, **span))

    host = rig.host.lower()
    calls: list[str] = []
    failed = 0
    for number in range(from_block, rig.w3.eth.block_number + 1):
        block = rig.w3.eth.get_block(number, full_transactions=True)
        txs: list[Any] = list(block["transactions"])
        for tx in txs:
            if str(tx["from"]).lower() != host:
                continue
            if rig.w3.eth.get_transaction_receipt(tx["hash"])["status"] != 1:
                failed += 1
            if str(tx["to"]).lower() == rig.deployment.job_marketplace.lower():
                fn, _args = market.decode_function_input(tx["input"])
                calls.append(str(fn.fn_name))
    return ChainFacts(
        claimed_by=[e.args.host for e in logs(market.events.JobClaimed, **one_job)],
        unclaimed_by=[e.args.host for e in logs(market.events.JobUnclaimed, **one_job)],
        submitted=[dict(e.args) for e in logs(market.events.ResultSubmitted, **one_job)],
        released=[dict(e.args) for e in logs(market.events.PaymentReleased, **one_job)],
        credited=[e.args.amount for e in logs(earnings.events.Credited, host=rig.host)],
        host_calls=calls,
        host_failed=failed,
        balance=int(earnings.functions.balanceOf(rig.host, ETH).call()),
    )


@dataclass(frozen=True)
class BookFacts:
    """The stopped node's SQLite, read-only: the job, its effects, the journal, the ledger."""

    state: str
    tokens_used: int | None
    history: list[str]
    effects: list[tuple[str, str, str, str]]  # (action, status, result status, tx) in order
    pending_effects: int
    pending_txs: int
    credits: list[tuple[str, str | None]]  # (amount, job id) of ledger credits


def book_facts(db_path: Path, job_id: int) -> BookFacts:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        jid = str(job_id)
        state, tokens = db.execute(
            "SELECT state, tokens_used FROM jobs WHERE kind='job' AND job_id=?", (jid,)
        ).fetchone()
        history = [
            str(r[0])
            for r in db.execute(
                "SELECT to_state FROM job_transitions WHERE job_id=? ORDER BY id", (jid,)
            )
        ]
        effects = [
            (str(r[0]), str(r[1]), str(json.loads(r[2] or "{}").get("status")), str(r[3]))
            for r in db.execute(
                "SELECT action, status, result, tx_hash FROM job_effects WHERE job_id=? "
                "ORDER BY id",
                (jid,),
            )
        ]
        pending = db.execute("SELECT COUNT(*) FROM job_effects WHERE status='pending'").fetchone()
        txs = db.execute("SELECT COUNT(*) FROM tx_journal WHERE status='pending'").fetchone()
        credits = [
            (str(r[0]), None if r[1] is None else str(r[1]))
            for r in db.execute("SELECT amount, job_id FROM earnings_ledger WHERE kind='credit'")
        ]
    finally:
        db.close()
    return BookFacts(
        state=str(state),
        tokens_used=None if tokens is None else int(tokens),
        history=history,
        effects=effects,
        pending_effects=int(pending[0]),
        pending_txs=int(txs[0]),
        credits=credits,
    )


def left_at_kill(db_path: Path, job_id: int) -> tuple[str, list[tuple[str, bool]]]:
    """What a SIGKILLed node left in SQLite for the job: its state and its pending effects
    as (action, whether a signed tx's hash was tied to it). Read before any restart."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        jid = str(job_id)
        [state] = db.execute(
            "SELECT state FROM jobs WHERE kind='job' AND job_id=?", (jid,)
        ).fetchone()
        pending = [
            (str(r[0]), r[1] is not None)
            for r in db.execute(
                "SELECT action, tx_hash FROM job_effects WHERE job_id=? AND status='pending'",
                (jid,),
            )
        ]
    finally:
        db.close()
    return str(state), pending


def wait_until(what: Any, limit_s: float, doing: str, node: NodeProcess) -> Any:
    """Poll `what()` until truthy (a safety net, not a speed claim); fail with the logs."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out {doing}:\n{node.all_logs()[-6000:]}")
