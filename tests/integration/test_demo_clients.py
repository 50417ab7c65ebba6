"""`fabstir-tui demo --headless --auto --duration S`: the demo registers its node, simulated
clients post jobs, the policy claims them, the prompts stream over P2P with receipts, payments
are released; at the stop one summary line says how many and how much — and those figures
are the node's ledger, which matches the PaymentReleased events a watcher read off the chain
while the demo ran."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
from web3 import Web3

from fabstir_tui.commands.demo_chain import NODE_SUBDIR, demo_account
from fabstir_tui.commands.devnet_setup import TOKEN_DECIMALS
from fabstir_tui.engine.chain import load_artifact

EXE = Path(sys.executable).parent / "fabstir-tui"
DURATION_S = 75
SUMMARY = re.compile(
    r"^demo: (\d+) jobs completed \((\d+) paid\), earned ([\d.]+) FUSD \((\d+) base units\); "
    r"(\d+) lost, (\d+) failed$"
)
AS_OF = re.compile(r"summary as of block (\d+):")
CLIENTS = re.compile(r"post jobs to JobMarketplace (0x[0-9a-fA-F]{40}) on (http://\S+) ")
ANVIL_PID = re.compile(r"anvil listening on \S+ \(pid (\d+)\)")


@dataclass
class ChainWatch:
    """PaymentReleased events to our host as the chain showed them, polled while the demo ran."""

    host: str
    paid: dict[str, tuple[int, int]] = field(default_factory=dict)  # tx -> (block, hostAmount)
    head: int = -1  # the newest block a poll saw completely
    error: str = ""

    def follow(self, log: Path, proc: subprocess.Popen[str]) -> None:
        match = None
        while proc.poll() is None and match is None:
            match = CLIENTS.search(log.read_text(errors="replace"))
            time.sleep(0.5)
        if match is None:
            return
        w3 = Web3(Web3.HTTPProvider(match.group(2), request_kwargs={"timeout": 5}))
        market = w3.eth.contract(
            address=Web3.to_checksum_address(match.group(1)),
            abi=load_artifact("JobMarketplace").abi,
        )
        while proc.poll() is None:
            try:
                head = int(w3.eth.block_number)
                for ev in market.events.PaymentReleased().get_logs(from_block=0, to_block=head):
                    if str(ev["args"]["host"]).lower() == self.host.lower():
                        tx = "0x" + bytes(ev["transactionHash"]).hex()
                        self.paid[tx] = (int(ev["blockNumber"]), int(ev["args"]["hostAmount"]))
                self.head = head
            except Exception as exc:  # anvil went away with the demo: keep the last poll
                self.error = repr(exc)
            time.sleep(1.0)


def _ledger(db: Path, up_to_block: int) -> dict[str, tuple[int, int, str]]:
    """The node's credits (tx -> block, amount, job) up to a block, read after the demo ended."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT tx_hash, block_number, amount, job_id FROM earnings_ledger "
            "WHERE kind = 'credit' AND block_number <= ?",
            (up_to_block,),
        ).fetchall()
    return {str(tx): (int(b), int(a), str(j)) for tx, b, a, j in rows}


def _kill_leftover_anvil(text: str) -> None:
    for pid in (int(p) for p in ANVIL_PID.findall(text)):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if psutil.Process(pid).name().startswith("anvil"):
                os.killpg(pid, signal.SIGKILL)


def test_duration_without_headless_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fabstir_tui.cli import main_group

    args = ["--data-dir", str(tmp_path / "d"), "demo", "--duration", "5"]
    result = CliRunner().invoke(main_group, args)
    assert result.exit_code == 2
    assert "--duration works with --headless only" in result.output
    assert not (tmp_path / "d").exists()  # refused before any devnet or key was made


@pytest.mark.slow
def test_headless_auto_demo_completes_jobs_and_its_summary_is_the_chains(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    log = tmp_path / "demo.err"
    args = [str(EXE), "--data-dir", str(data_dir), "--gpu-backend", "none"]
    args += ["demo", "--headless", "--auto", "--duration", str(DURATION_S)]
    host = demo_account().address
    watch = ChainWatch(host)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    watcher = threading.Thread(target=watch.follow, args=(log, proc), daemon=True)
    watcher.start()
    try:
        out, _ = proc.communicate(timeout=DURATION_S + 300)  # a safety net, not a speed claim
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.join(10)
        _kill_leftover_anvil(log.read_text(errors="replace"))
    err = log.read_text(errors="replace")
    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err, err[-4000:]

    lines = [m for m in (SUMMARY.match(line) for line in out.splitlines()) if m]
    assert len(lines) == 1, out
    completed, paid, earned_text, earned, lost, failed = lines[0].groups()
    assert int(completed) >= 1 and int(earned) > 0, lines[0].group(0)
    assert 1 <= int(paid) <= int(completed)
    assert Decimal(earned_text) * 10**TOKEN_DECIMALS == int(earned)
    assert int(lost) == 0  # the only host on this devnet cannot lose a race

    # The clients did each step, and the receipts they checked were signed by our key.
    assert "AUDIT   register: stake" in err and "demo node registered" in err
    assert re.search(r"client #\d \S+: posted job \d+", err)
    assert f"receipt signed by {host[:6]}…{host[-4:]} ✓" in err
    assert re.search(r"accepted job \d+ early|leaves job \d+ to the dispute window", err)

    # The summary is the ledger as of the block it names …
    as_of = AS_OF.search(err)
    assert as_of, err[-3000:]
    block = int(as_of.group(1))
    ledger = _ledger(data_dir / NODE_SUBDIR / "node.db", block)
    assert sum(amount for _, amount, _ in ledger.values()) == int(earned)
    assert len({job for _, _, job in ledger.values()}) == int(paid)

    # … and the ledger is what the chain paid our host, payment for payment.
    bound = min(block, watch.head)
    on_chain = {tx: amount for tx, (b, amount) in watch.paid.items() if b <= bound}
    assert on_chain, f"the watcher saw no payment up to block {bound} ({watch.error})"
    in_ledger = {tx: amount for tx, (b, amount, _) in ledger.items() if b <= bound}
    assert in_ledger == on_chain
