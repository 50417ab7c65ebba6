"""`fabstir-tui demo` on its embedded devnet: real anvil, real contracts, the public demo key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import psutil
import pytest
from eth_account import Account

from fabstir_tui.commands.demo_chain import (
    DEMO_PASSPHRASE,
    DEMO_SCRYPT_N,
    KEY_SUBDIR,
    ChainlessDemo,
    DemoChain,
    demo_account,
    ensure_demo_keystore,
    fresh_node_dir,
    start_demo_chain,
)
from fabstir_tui.commands.devnet_setup import Devnet, DevnetInfo
from fabstir_tui.config import load_config
from fabstir_tui.engine.chain.anvil import Anvil
from fabstir_tui.engine.chain.deploy import Deployment
from fabstir_tui.engine.chain.wallet import create_keystore, read_address
from fabstir_tui.engine.node import Node

EXE = Path(sys.executable).parent / "fabstir-tui"
DEMO_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil's public test account #1
_ANVIL_PID = re.compile(r"anvil listening on \S+ \(pid (\d+)\)")


def _demo_args(data_dir: Path, *extra: str) -> list[str]:
    return [str(EXE), "--data-dir", str(data_dir), "--gpu-backend", "none", "demo", *extra]


def _anvil_pid(text: str) -> int:
    match = _ANVIL_PID.search(text)
    assert match, f"the demo printed no anvil pid:\n{text}"
    return int(match.group(1))


def _gone(pid: int, limit_s: float = 30) -> bool:
    """True once `pid` has exited (a zombie counts as exited)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    with contextlib.suppress(psutil.TimeoutExpired):
        proc.wait(timeout=limit_s)
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_leftover(pid: int) -> None:
    """Test hygiene: never leave an anvil behind, even when an assertion failed."""
    if not pid or _gone(pid, 0):
        return
    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
        if psutil.Process(pid).name().startswith("anvil"):  # not a stranger that reused the pid
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def anvils() -> Iterator[list[int]]:
    """Anvil pids a test saw; any still running at teardown is killed (after the asserts)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        _kill_leftover(pid)


def _run_once(data_dir: Path, anvils: list[int]) -> tuple[subprocess.CompletedProcess[str], int]:
    res = subprocess.run(
        _demo_args(data_dir, "--headless", "--once"), capture_output=True, text=True, timeout=300
    )
    pid = _anvil_pid(res.stderr)
    anvils.append(pid)
    return res, pid


@pytest.mark.slow
def test_headless_demo_once_runs_on_a_devnet_and_leaves_no_anvil(
    tmp_path: Path, anvils: list[int]
) -> None:
    data_dir = tmp_path / "d"
    res, pid = _run_once(data_dir, anvils)
    err = res.stderr
    assert res.returncode == 0, err
    assert "devnet: ready in" in err and f"(anvil pid {pid})" in err
    assert "devnet: approving model" in err
    assert f"AUDIT   unlock wallet {DEMO_ADDRESS}: unlocked" in err
    assert f"demo node key {DEMO_ADDRESS} unlocked" in err
    assert "AUDIT   load model SmolLM2-135M-Instruct.Q4_1.gguf: loaded" in err
    assert f"devnet: anvil (pid {pid}) stopped" in err
    assert err.index("node stopped") < err.index(f"anvil (pid {pid}) stopped")
    assert "Traceback" not in err
    assert _gone(pid, 0), "anvil outlived the demo"
    keystore = data_dir / "keystore.json"
    assert read_address(keystore) == DEMO_ADDRESS
    assert keystore.stat().st_mode & 0o077 == 0

    # A second run: new chain, same key file, and a store without the last chain's rows.
    mtime = keystore.stat().st_mtime_ns
    again, pid2 = _run_once(data_dir, anvils)
    assert again.returncode == 0, again.stderr
    assert "wrote the demo key's keystore" not in again.stderr
    assert keystore.stat().st_mtime_ns == mtime
    assert f"AUDIT   unlock wallet {DEMO_ADDRESS}: unlocked" in again.stderr
    assert pid2 != pid and _gone(pid2, 0)
    assert "reorg" not in again.stderr.lower()


def test_demo_without_anvil_warns_and_runs_without_a_chain(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    res = subprocess.run(
        _demo_args(data_dir, "--headless", "--once"),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FABSTIR_ANVIL": str(tmp_path / "no-anvil")},
    )
    assert res.returncode == 0, res.stderr
    assert "warning: the demo runs without a chain" in res.stderr
    assert "FABSTIR_ANVIL" in res.stderr
    assert "unlock wallet" not in res.stderr and "Traceback" not in res.stderr
    assert not (data_dir / "keystore.json").exists()  # nothing written for a chain not there


@pytest.mark.slow
def test_sigkill_of_the_demo_still_stops_its_anvil(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _demo_args(tmp_path / "d", "--headless"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pid = 0
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "anvil listening" in line:
                pid = _anvil_pid(line)
            if "running headless" in line:
                break
        assert pid, "".join(seen)
        proc.kill()  # no clean-up code runs in the demo: the guard must stop anvil
        proc.wait()
        assert _gone(pid, 30), "anvil outlived a SIGKILLed demo"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftover(pid)


@pytest.mark.slow
def test_sigterm_while_the_devnet_starts_stops_anvil_and_exits_130(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _demo_args(tmp_path / "d", "--headless"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pid = 0
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "anvil listening" in line:
                pid = _anvil_pid(line)
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftover(pid)
    assert proc.returncode == 130, rest
    assert "stopped by SIGTERM" in rest and "Traceback" not in rest
    assert _gone(pid, 0)


# --- the demo key and store, without a chain ------------------------------------------------


def test_demo_key_is_anvil_account_1() -> None:
    account = demo_account()
    assert account.address == DEMO_ADDRESS
    assert Account.from_key(account.private_key).address == DEMO_ADDRESS


def test_demo_keystore_is_written_once_and_unlocks_with_the_demo_passphrase(
    tmp_path: Path,
) -> None:
    notes: list[str] = []
    path = ensure_demo_keystore(tmp_path, demo_account(), notes.append)
    assert path == tmp_path / "keystore.json" and len(notes) == 1
    key = Account.decrypt(path.read_text(), DEMO_PASSPHRASE)
    assert Account.from_key(key).address == DEMO_ADDRESS
    assert ensure_demo_keystore(tmp_path, demo_account(), notes.append) == path
    assert len(notes) == 1  # reused silently


def test_a_keystore_the_demo_did_not_write_is_left_alone(tmp_path: Path) -> None:
    theirs = tmp_path / "keystore.json"
    # Same cheap cost as the demo's, other passphrase: still not the demo's file.
    owner = create_keystore(theirs, "their own passphrase", scrypt_n=DEMO_SCRYPT_N)
    before = theirs.read_bytes()
    notes: list[str] = []
    path = ensure_demo_keystore(tmp_path, demo_account(), notes.append)
    assert path == tmp_path / KEY_SUBDIR / "keystore.json"
    assert read_address(path) == DEMO_ADDRESS
    assert theirs.read_bytes() == before and read_address(theirs) == owner
    assert any("left untouched" in n for n in notes)


def test_the_demos_own_keystore_for_another_key_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, DEMO_PASSPHRASE, scrypt_n=DEMO_SCRYPT_N)  # a random key
    notes: list[str] = []
    assert ensure_demo_keystore(tmp_path, demo_account(), notes.append) == path
    assert read_address(path) == DEMO_ADDRESS
    assert any("replaced the demo's own keystore" in n for n in notes)


def test_fresh_node_dir_drops_the_last_runs_database_only(tmp_path: Path) -> None:
    node_dir = tmp_path / "devnet-node"
    node_dir.mkdir()
    for name in ("node.db", "node.db-wal", "node.db-shm", "other.txt"):
        (node_dir / name).write_text("x")
    (tmp_path / "node.db").write_text("keep")  # the folder above is not the demo's to clear
    assert fresh_node_dir(tmp_path) == node_dir
    assert sorted(p.name for p in node_dir.iterdir()) == ["other.txt"]
    assert (tmp_path / "node.db").read_text() == "keep"


def test_the_demo_layer_hides_the_operators_chain_settings(tmp_path: Path) -> None:
    """Every [chain] key the devnet implies is set, empty contract slots too, labelled demo."""
    real = "0x" + "ab" * 20
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[chain]\nrpc_urls = ["https://mainnet.base.org"]\nchain_id = 8453\n'
        f'job_marketplace = "{real}"\nconfirmations = 5\n'
    )
    deployment = Deployment(
        chain_id=31337,
        deployer=DEMO_ADDRESS,
        arbiter=DEMO_ADDRESS,
        start_block=3,
        token="0x" + "01" * 20,
        model_registry="0x" + "02" * 20,
        node_registry="0x" + "03" * 20,
        host_earnings="0x" + "04" * 20,
    )
    info = DevnetInfo(
        chain_id=31337,
        block_time_s=1.0,
        rpc_url="http://127.0.0.1:8545",
        ws_url="ws://127.0.0.1:8545",
        anvil_pid=1,
        deployment=deployment,
        config_path=None,
    )
    chain = DemoChain(Devnet(Anvil(), info, None), tmp_path / "k.json", DEMO_ADDRESS, tmp_path)
    extra = chain.config_extra()
    loaded = load_config(config_file, env={}, cli=extra, cli_labels=dict.fromkeys(extra, "demo"))
    c = loaded.config.chain
    assert c.rpc_urls == ["http://127.0.0.1:8545"] and c.chain_id == 31337
    assert c.job_marketplace == "" and c.confirmations == 0 and c.start_block == 3
    assert c.payment_token == "0x" + "01" * 20 and c.keystore == tmp_path / "k.json"
    assert loaded.config.paths.data_dir == tmp_path
    assert "demo" in loaded.sources["chain.rpc_urls"]


async def test_the_tui_logs_the_devnet_set_up_and_unlocks_the_demo_key(
    tmp_path: Path, smollm_gguf: Path
) -> None:
    """The TUI path as `_run_node` wires it: set-up lines in the node's log, key unlocked."""
    from fabstir_tui.ui.app import FabstirApp

    chain = start_demo_chain(tmp_path / "demo", log_later=True)
    assert isinstance(chain, DemoChain), chain
    pid = chain.devnet.info.anvil_pid
    try:
        extra = {
            "paths.models_dirs": [smollm_gguf.parent],
            "telemetry.gpu_backend": "none",
            **chain.config_extra(),
        }
        config = load_config(
            None,
            env={},
            cli=extra,
            cli_labels=dict.fromkeys(extra, "demo"),
            default_file=tmp_path / "absent.toml",
        )
        node = Node(config.config)
        app = FabstirApp(node, config.config, after_start=chain.after_start)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(300):
                await pilot.pause(0.05)
                if any(e.message.endswith(" unlocked") for e in node.recent_logs()):
                    break
            assert node.chain.wallet_state == "unlocked"
            messages = [(e.source, e.message) for e in node.recent_logs()]
            assert any(
                s == "devnet" and m.startswith("deploying ModelRegistry") for s, m in messages
            )
            assert ("demo", f"demo node key {DEMO_ADDRESS} unlocked") in messages
            await node.stop()
    finally:
        chain.stop()
    assert _gone(pid, 0)


def test_chainless_demo_repeats_its_warning_in_the_node_log_for_the_tui() -> None:
    logged: list[tuple[str, str, str]] = []

    class FakeNode:
        def log(self, level: str, source: str, message: str) -> None:
            logged.append((level, source, message))

    fake = cast(Node, FakeNode())
    asyncio.run(ChainlessDemo("anvil not found", log_later=False).after_start(fake))
    assert logged == []  # headless: stderr already said it
    asyncio.run(ChainlessDemo("anvil not found", log_later=True).after_start(fake))
    assert logged == [("warning", "demo", "the demo runs without a chain: anvil not found")]
