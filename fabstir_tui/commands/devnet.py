"""`fabstir-tui devnet`: a local chain with our contracts, so the node can be tried end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fabstir_tui.commands.devnet_setup import (
    CONTRACT_KEYS,
    DEVNET_CONFIG_NAME,
    MAINNET_CHAIN_IDS,
    SETUP_ERRORS,
    Devnet,
    DevnetInfo,
    SetupInterrupted,
    StopSignals,
    eth_text,
    start_devnet,
    units_text,
)
from fabstir_tui.commands.output import EXIT_OK, EXIT_USAGE, emit_json, fail, say
from fabstir_tui.config import Config
from fabstir_tui.engine.chain.anvil import DEFAULT_MNEMONIC


def summary_lines(info: DevnetInfo) -> list[str]:
    """The human readiness summary (stderr): what runs where and how to use it."""
    names = {key: name for key, name, _ in CONTRACT_KEYS}
    width = max(len(n) for n in names.values())
    block = f"{info.block_time_s:g} s" if info.block_time_s else "on every transaction"
    lines = [
        f"devnet ready in {info.ready_s:.1f} s",
        f"  chain id     {info.chain_id}  (anvil pid {info.anvil_pid}, blocks: {block})",
        f"  RPC          {info.rpc_url}",
        f"  WebSocket    {info.ws_url}",
        f"  start block  {info.deployment.start_block}",
        "  contracts",
    ]
    lines += [f"    {names[k]:<{width}}  {a}" for k, a in info.contracts().items()]
    if not info.deployment.job_marketplace:
        lines.append("    (this version deploys no JobMarketplace yet)")
    for model_id, name in info.models:
        lines.append(f"  approved model  {name}  id 0x{model_id.hex()}")
    lines += [f"  note: {n}" for n in info.notes]
    lines.append(
        "  test accounts: keys from anvil's PUBLIC default mnemonic; anyone can spend them, "
        "never use them on a real network"
    )
    for i, a in enumerate(info.accounts):
        lines.append(
            f"    {i}: {a.address}  {eth_text(a.eth_wei)} ETH  {units_text(a.token_units)} FUSD  "
            f"key {a.private_key}"
        )
    lines += [
        f"  config       {info.config_path}",
        f"  use it       fabstir-tui --config {info.config_path}",
        "devnet running; Ctrl-C (SIGINT), SIGTERM or SIGHUP stops it",
    ]
    return lines


def info_json(info: DevnetInfo) -> dict[str, Any]:
    """The one JSON document `--json` prints once the devnet is ready."""
    return {
        "ready": True,
        "ready_s": round(info.ready_s, 3),
        "chain_id": info.chain_id,
        "block_time_s": info.block_time_s,
        "rpc_url": info.rpc_url,
        "ws_url": info.ws_url,
        "anvil_pid": info.anvil_pid,
        "start_block": info.deployment.start_block,
        "deployer": info.deployment.deployer,
        "arbiter": info.deployment.arbiter,
        "contracts": info.contracts(),
        "approved_models": [{"id": "0x" + m.hex(), "name": n} for m, n in info.models],
        "notes": info.notes,
        "config_path": str(info.config_path),
        "usage": f"fabstir-tui --config {info.config_path}",
        "mnemonic": DEFAULT_MNEMONIC,
        "keys_are_public": True,
        "accounts": [
            {
                "address": a.address,
                "private_key": a.private_key,
                "eth_wei": str(a.eth_wei),
                "token_units": str(a.token_units),
            }
            for a in info.accounts
        ],
    }


def run_devnet(
    config: Config,
    *,
    block_time_s: float,
    chain_id: int,
    config_out: Path | None,
    as_json: bool,
) -> int:
    """Bring the devnet up, report it, wait for a stop signal; anvil never outlives this call."""
    if chain_id in MAINNET_CHAIN_IDS:
        return fail(
            f"chain id {chain_id} is {MAINNET_CHAIN_IDS[chain_id]}: a devnet with public test "
            "keys must use another id (the default is 31337)",
            EXIT_USAGE,
        )
    target = config_out if config_out is not None else config.paths.data_dir / DEVNET_CONFIG_NAME
    config_path = target.expanduser().absolute()
    signals = StopSignals()

    def progress(message: str) -> None:
        signals.checkpoint()
        say(f"devnet: {message}")

    signals.install()
    devnet: Devnet | None = None
    try:
        try:
            devnet = start_devnet(
                block_time_s=block_time_s,
                chain_id=chain_id,
                progress=progress,
                config_path=config_path,
            )
            signals.checkpoint()
        except SetupInterrupted as exc:
            return fail(f"devnet stopped by {exc} before it was ready")
        except SETUP_ERRORS as exc:
            return fail(f"devnet set-up failed: {exc}")
        info = devnet.info
        for line in summary_lines(info):
            say(line)
        if as_json:
            emit_json(info_json(info))
        while not signals.stop.wait(1.0):
            if not devnet.alive():
                return fail(f"anvil exited unexpectedly:\n{devnet.anvil.output_tail()}")
        say(f"devnet: {signals.name} received, stopping")
        return EXIT_OK
    finally:
        if devnet is not None:
            devnet.stop()
            say(f"devnet: anvil (pid {devnet.info.anvil_pid}) stopped")
        signals.restore()
