"""Doctor's chain checks: can this node reach its chain, find its contracts and pay for gas?"""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import requests
from web3 import Web3
from web3.exceptions import Web3Exception

from fabstir_tui.commands.doctor import Check
from fabstir_tui.config import Config
from fabstir_tui.engine.chain.artifacts import load_artifact
from fabstir_tui.engine.chain.rpc_pool import url_host
from fabstir_tui.engine.chain.wallet import WalletError, keystore_path, read_address

RPC_TIMEOUT_S = 5.0
_CONTRACTS = (  # config key, contract name
    ("node_registry", "NodeRegistry"),
    ("model_registry", "ModelRegistry"),
    ("job_marketplace", "JobMarketplace"),
    ("host_earnings", "HostEarnings"),
    ("payment_token", "payment token"),
)
_NEEDS_KEY = ("chain registration", "chain gas balance")
_FIX_RPC_FIRST = "fix the chain RPC check first"
_RPC_FIX = (
    "start the RPC node or correct chain.rpc_urls (`fabstir-tui devnet` runs a local chain "
    "and writes a config for it)"
)


def connect(url: str, timeout_s: float = RPC_TIMEOUT_S) -> Web3:
    """A sync HTTP client that fails fast: no retries, a short timeout (doctor is a CLI)."""
    provider = Web3.HTTPProvider(
        url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
    )
    return Web3(provider)


def rpc_reason(full_url: str, exc: BaseException) -> str:
    """One short sentence naming the URL, instead of requests' nested exception text."""
    url = url_host(full_url)
    text = str(exc).replace(full_url, url)  # requests quotes the whole URL, API key and all
    if isinstance(exc, requests.Timeout):
        return f"{url} did not answer within {RPC_TIMEOUT_S:g} s"
    if isinstance(exc, requests.ConnectionError):
        if "Connection refused" in text:
            return f"connection refused to {url} (nothing listens there)"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return f"cannot resolve the host of {url}"
        return f"cannot connect to {url}: {text[:200]}"
    if isinstance(exc, requests.HTTPError):
        return f"{url} answered HTTP error: {text[:200]}"
    return f"{url}: {type(exc).__name__}: {text[:200]}"


def _eth(wei: int) -> str:
    return f"{Decimal(wei) / Decimal(10**18):.6f}".rstrip("0").rstrip(".") + " ETH"


def check_rpc(urls: list[str]) -> tuple[list[Check], list[tuple[str, Web3]]]:
    """Reach every RPC URL; the ones that answer carry on to the other checks."""
    checks: list[Check] = []
    live: list[tuple[str, Web3]] = []
    for url in urls:
        w3 = connect(url)
        t0 = time.monotonic()
        try:
            block = int(w3.eth.block_number)
        except (OSError, Web3Exception, ValueError) as exc:
            checks.append(Check("chain RPC", "fail", rpc_reason(url, exc), _RPC_FIX))
            continue
        ms = (time.monotonic() - t0) * 1000
        checks.append(Check("chain RPC", "ok", f"{url_host(url)}: block {block}, {ms:.0f} ms"))
        live.append((url, w3))
    return checks, live


DEVNET_CHAIN_IDS = frozenset({31337, 1337})


def check_chain_id(config: Config, live: list[tuple[str, Web3]]) -> Check:
    """The RPC must serve the chain the config names, or every signature goes to the wrong one."""
    want = config.chain.chain_id
    wrong: list[str] = []
    for url, w3 in live:
        try:
            got = int(w3.eth.chain_id)
        except (OSError, Web3Exception, ValueError) as exc:
            return Check("chain id", "fail", rpc_reason(url, exc), _RPC_FIX)
        if got != want:
            wrong.append(f"{url_host(url)} serves chain id {got}")
    if wrong:
        return Check(
            "chain id",
            "fail",
            f"{'; '.join(wrong)}, but chain.chain_id is {want}",
            f"point chain.rpc_urls at a chain-{want} node, or set chain.chain_id to the "
            "chain you mean",
        )
    if want not in DEVNET_CHAIN_IDS and config.chain.confirmations == 0:
        return Check(
            "chain id",
            "warn",
            f"{want}, as configured, but chain.confirmations is 0: a reorg on a real chain "
            "can take back what the node already counted",
            "set chain.confirmations to 1 or more off the devnet",
        )
    return Check("chain id", "ok", f"{want}, as configured")


def check_contracts(config: Config, w3: Web3) -> Check:
    """Every configured address must hold code: an empty one means a wrong network or a typo."""
    chain = config.chain
    unset = [key for key, _ in _CONTRACTS if not getattr(chain, key)]
    missing: list[str] = []
    found: list[str] = []
    for key, name in _CONTRACTS:
        address = str(getattr(chain, key))
        if not address:
            continue
        code = w3.eth.get_code(Web3.to_checksum_address(address))
        (found if len(code) > 0 else missing).append(f"{name} (chain.{key} = {address})")
    if missing:
        return Check(
            "chain contracts",
            "fail",
            "no contract code at " + "; ".join(missing),
            "correct the address, or point chain.rpc_urls at the network it was deployed on "
            "(a devnet's addresses die with it: rerun `fabstir-tui devnet`)",
        )
    if unset and not found:
        return Check(
            "chain contracts",
            "warn",
            "no contract addresses configured",
            "set chain.node_registry, chain.model_registry, chain.job_marketplace, "
            "chain.host_earnings and chain.payment_token, or run `fabstir-tui devnet`",
        )
    detail = "code at " + ", ".join(found)
    if unset:
        return Check(
            "chain contracts",
            "warn",
            detail + "; not set: " + ", ".join(f"chain.{k}" for k in unset),
            "set the missing addresses (the node needs all of them to take jobs)",
        )
    return Check("chain contracts", "ok", detail)


def _node_address(config: Config) -> tuple[str | None, Check | None]:
    """The node's address from its keystore, or the not-available check that says why not."""
    path: Path = keystore_path(config)
    if not path.exists():
        why = Check(
            "chain registration",
            "not_available",
            f"no keystore at {path}, so no node address to look up",
            "`fabstir-tui keys new` (or `fabstir-tui keys import`)",
        )
        return None, why
    try:
        return read_address(path), None
    except WalletError as exc:
        return None, Check("chain registration", "fail", str(exc), "`fabstir-tui keys new`")


def check_registration(config: Config, w3: Web3, address: str, contracts_ok: bool) -> Check:
    """Registered hosts are what clients see: an unregistered node gets no work."""
    registry = config.chain.node_registry
    if not registry or not contracts_ok:
        why = "chain.node_registry is not set" if not registry else "the contracts check failed"
        return Check(
            "chain registration", "not_available", f"not checked: {why}", "fix the check above"
        )
    contract = w3.eth.contract(
        address=Web3.to_checksum_address(registry), abi=load_artifact("NodeRegistry").abi
    )
    try:
        node = contract.functions.getNode(address).call()
        stake, payout, _meta, models, active = node[:5]
    except (OSError, Web3Exception, ValueError) as exc:
        return Check(
            "chain registration",
            "fail",
            f"NodeRegistry.getNode({address}) failed: {str(exc)[:200]}",
            "check that chain.node_registry is our NodeRegistry",
        )
    if not active:
        return Check(
            "chain registration",
            "warn",
            f"{address} is not registered in NodeRegistry {registry}",
            "register from the TUI",
        )
    return Check(
        "chain registration",
        "ok",
        f"{address} registered: stake {_eth(int(stake))}, {len(models)} model(s), payout {payout}",
    )


def check_gas(config: Config, w3: Web3, address: str) -> Check:
    """Every claim, proof and withdrawal costs gas; an empty wallet stalls jobs mid-way."""
    try:
        wei = int(w3.eth.get_balance(Web3.to_checksum_address(address)))
    except (OSError, Web3Exception, ValueError) as exc:
        return Check("chain gas balance", "fail", str(exc)[:200], _RPC_FIX)
    floor = Decimal(str(config.chain.low_gas_eth))
    detail = f"{_eth(wei)} at {address}"
    if Decimal(wei) < floor * Decimal(10**18):
        return Check(
            "chain gas balance",
            "warn",
            f"{detail}, below chain.low_gas_eth ({config.chain.low_gas_eth:g} ETH)",
            f"send ETH for gas to {address} (on a devnet, from one of its funded test accounts)",
        )
    return Check("chain gas balance", "ok", detail)


def chain_checks(config: Config) -> list[Check]:
    """All chain checks in order; the ones after the RPC need an RPC that answered."""
    chain = config.chain
    if not chain.enabled:
        return [
            Check(
                "chain",
                "not_available",
                "no RPC URL configured: the chain side is off",
                "set chain.rpc_urls or run `fabstir-tui devnet`",
            )
        ]
    checks, live = check_rpc(list(chain.rpc_urls))
    address, no_key = _node_address(config)
    if not live:
        skipped = Check("", "not_available", "not checked: no chain RPC answered", _FIX_RPC_FIRST)
        for name in ("chain id", "chain contracts", *_NEEDS_KEY):
            base = no_key if no_key is not None and name in _NEEDS_KEY else skipped
            checks.append(replace(base, name=name))
        return checks
    url, w3 = live[0]
    checks.append(check_chain_id(config, live))
    try:
        contracts = check_contracts(config, w3)
    except (OSError, Web3Exception, ValueError) as exc:
        contracts = Check("chain contracts", "fail", rpc_reason(url, exc), _RPC_FIX)
    checks.append(contracts)
    if address is None:
        assert no_key is not None
        checks += [replace(no_key, name=name) for name in _NEEDS_KEY]
        return checks
    checks.append(check_registration(config, w3, address, contracts.verdict != "fail"))
    checks.append(check_gas(config, w3, address))
    return checks
