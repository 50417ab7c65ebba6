"""Doctor's chain checks against a real anvil, a dead port, a wrong chain id and empty addresses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from chain_kit import MODEL_A, Suite, register
from eth_account import Account

from fabstir_tui.commands.devnet_setup import devnet_accounts
from fabstir_tui.commands.doctor import Check
from fabstir_tui.commands.doctor_chain import chain_checks
from fabstir_tui.config import Config, load_config
from fabstir_tui.engine.chain import Anvil

EXE = Path(sys.executable).parent / "fabstir-tui"
NO_CODE = "0x000000000000000000000000000000000000dEaD"


def _free_port() -> int:
    """A port nothing listens on: bound by the OS for a moment, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, **chain: object) -> Config:
    env = {f"FABSTIR_CHAIN__{k.upper()}": str(v) for k, v in chain.items()}
    env["FABSTIR_PATHS__DATA_DIR"] = str(tmp_path / "data")
    return load_config(None, env=env, default_file=tmp_path / "none.toml").config


def _suite_addresses(suite: Suite) -> dict[str, str]:
    return {
        "node_registry": suite.nodes.address,
        "model_registry": suite.models.address,
        "host_earnings": suite.earnings.address,
        "payment_token": suite.token.address,
    }


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _host_keystore(tmp_path: Path, suite: Suite) -> Path:
    """A real keystore for the suite's host account (anvil account 1, public test key)."""
    key = devnet_accounts(2)[1]
    assert key.address == suite.host
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(Account.encrypt(key.private_key, "pw", kdf="scrypt", iterations=2)))
    return path


def test_no_rpc_is_one_not_available_check(tmp_path: Path) -> None:
    checks = chain_checks(_config(tmp_path))
    assert checks == [
        Check(
            "chain",
            "not_available",
            "no RPC URL configured: the chain side is off",
            "set chain.rpc_urls or run `fabstir-tui devnet`",
        )
    ]


def test_dead_rpc_fails_naming_the_url_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    res = subprocess.run(
        [str(EXE), "--data-dir", str(tmp_path / "d"), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "FABSTIR_CHAIN__RPC_URLS": url},
    )
    assert res.returncode == 1, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    assert doc["ok"] is False
    rpc = [c for c in doc["checks"] if c["name"] == "chain RPC"]
    assert len(rpc) == 1 and rpc[0]["verdict"] == "fail"
    assert url in rpc[0]["detail"] and "connection refused" in rpc[0]["detail"]
    assert rpc[0]["fix"]
    rest = {c["name"]: c["verdict"] for c in doc["checks"] if c["name"].startswith("chain ")}
    assert rest["chain id"] == rest["chain contracts"] == "not_available"
    # No keystore in the fresh data dir: the key-based checks say so rather than fail.
    assert rest["chain registration"] == rest["chain gas balance"] == "not_available"
    assert "Traceback" not in res.stderr


def test_wrong_chain_id_names_both_ids(tmp_path: Path, devchain: Anvil) -> None:
    checks = _by_name(chain_checks(_config(tmp_path, rpc_urls=devchain.http_url, chain_id=84532)))
    assert checks["chain RPC"].verdict == "ok" and devchain.http_url in checks["chain RPC"].detail
    chain_id = checks["chain id"]
    assert chain_id.verdict == "fail"
    assert "31337" in chain_id.detail and "84532" in chain_id.detail and chain_id.fix


def test_address_without_code_names_the_contract(
    tmp_path: Path, suite: Suite, devchain: Anvil
) -> None:
    addresses = {**_suite_addresses(suite), "node_registry": NO_CODE}
    config = _config(tmp_path, rpc_urls=devchain.http_url, **addresses)
    contracts = _by_name(chain_checks(config))["chain contracts"]
    assert contracts.verdict == "fail"
    assert "NodeRegistry" in contracts.detail and NO_CODE in contracts.detail
    assert "ModelRegistry" not in contracts.detail


def test_unset_addresses_warn(tmp_path: Path, suite: Suite, devchain: Anvil) -> None:
    config = _config(tmp_path, rpc_urls=devchain.http_url, **_suite_addresses(suite))
    contracts = _by_name(chain_checks(config))["chain contracts"]
    # The chain-kit suite has no marketplace: the missing address is named.
    assert contracts.verdict == "warn" and "chain.job_marketplace" in contracts.detail


def test_registration_and_gas_with_a_keystore(
    tmp_path: Path, suite: Suite, devchain: Anvil
) -> None:
    keystore = _host_keystore(tmp_path, suite)
    config = _config(
        tmp_path, rpc_urls=devchain.http_url, keystore=keystore, **_suite_addresses(suite)
    )
    checks = _by_name(chain_checks(config))
    assert checks["chain registration"].verdict == "warn"
    assert checks["chain registration"].fix == "register from the TUI"
    assert (
        checks["chain gas balance"].verdict == "ok"
        and suite.host in checks["chain gas balance"].detail
    )

    register(suite)
    registered = _by_name(chain_checks(config))["chain registration"]
    assert registered.verdict == "ok", registered
    assert "stake 0.1 ETH" in registered.detail and "1 model(s)" in registered.detail
    assert suite.nodes.functions.serves(suite.host, MODEL_A).call()


def test_low_gas_warns(tmp_path: Path, suite: Suite, devchain: Anvil) -> None:
    keystore = _host_keystore(tmp_path, suite)
    config = _config(
        tmp_path,
        rpc_urls=devchain.http_url,
        keystore=keystore,
        low_gas_eth=1_000_000,
        **_suite_addresses(suite),
    )
    gas = _by_name(chain_checks(config))["chain gas balance"]
    assert gas.verdict == "warn" and "chain.low_gas_eth" in gas.detail and suite.host in gas.fix


def test_no_keystore_is_not_available_with_the_fix(
    tmp_path: Path, suite: Suite, devchain: Anvil
) -> None:
    config = _config(tmp_path, rpc_urls=devchain.http_url, **_suite_addresses(suite))
    checks = _by_name(chain_checks(config))
    for name in ("chain registration", "chain gas balance"):
        assert checks[name].verdict == "not_available"
        assert "fabstir-tui keys new" in checks[name].fix


def test_zero_confirmations_off_the_devnet_is_a_warning(tmp_path: Path) -> None:
    with Anvil(chain_id=84532, accounts=2) as sepolia_id:  # Base Sepolia's id, on anvil
        url = sepolia_id.http_url
        for confirmations, verdict in ((0, "warn"), (1, "ok")):
            config = _config(tmp_path, rpc_urls=url, chain_id=84532, confirmations=confirmations)
            check = _by_name(chain_checks(config))["chain id"]
            assert check.verdict == verdict, check
        assert (
            "confirmations"
            in _by_name(chain_checks(_config(tmp_path, rpc_urls=url, chain_id=84532)))[
                "chain id"
            ].fix
        )
