"""The `fabstir-tui` command line (DESIGN §10): exit 0 ok, 1 failed, 2 usage or config error."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from fabstir_tui import __version__
from fabstir_tui.commands.keys import init_cmd, keys_group
from fabstir_tui.commands.output import EXIT_USAGE, emit_json, fail
from fabstir_tui.commands.status import status_cmd
from fabstir_tui.commands.verify import verify_cmd
from fabstir_tui.config import (
    Config,
    ConfigError,
    LoadedConfig,
    config_as_json,
    format_config_show,
    load_config,
)

# Flag name -> dotted config key; a flag given on the command line beats file and env.
_FLAGS: dict[str, str] = {
    "data_dir": "paths.data_dir",
    "models_dir": "paths.models_dirs",
    "threads": "inference.threads",
    "n_gpu_layers": "inference.n_gpu_layers",
    "ctx_size": "inference.context_length",
    "theme": "ui.theme",
    "gpu_backend": "telemetry.gpu_backend",
    "replay_file": "telemetry.replay_file",
    "read_only": "node.read_only",
    "log_level": "node.log_level",
}


class Settings:
    """What the root command collected; subcommands turn it into a config when they need one."""

    def __init__(self, config_file: Path | None, flags: dict[str, Any]) -> None:
        self.config_file = config_file
        self.cli: dict[str, object] = {}
        self.labels: dict[str, str] = {}
        for name, value in flags.items():
            if value is None or value == () or value is False:
                continue
            key = _FLAGS[name]
            self.cli[key] = list(value) if isinstance(value, tuple) else value
            self.labels[key] = "--" + name.replace("_", "-")

    def load(self, extra: dict[str, object] | None = None) -> LoadedConfig:
        cli = {**self.cli, **(extra or {})}
        labels = {**self.labels, **{k: "demo" for k in (extra or {})}}
        return load_config(self.config_file, cli=cli, cli_labels=labels)


def _loaded(ctx: click.Context, extra: dict[str, object] | None = None) -> LoadedConfig:
    """The effective config with its sources; a config error exits 2 with its sentence."""
    settings: Settings = ctx.obj
    try:
        return settings.load(extra)
    except ConfigError as exc:
        ctx.exit(fail(str(exc), EXIT_USAGE))
        raise AssertionError("unreachable") from exc


def _config(ctx: click.Context, extra: dict[str, object] | None = None) -> Config:
    return _loaded(ctx, extra).config


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fabstir-tui")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML config file.")
@click.option("--headless", is_flag=True, help="Run the node without a screen; logs on stderr.")
@click.option("--data-dir", type=click.Path(), help="Store, caches and state.")
@click.option(
    "--models-dir",
    multiple=True,
    type=click.Path(),
    help="Folder with GGUF models (repeatable).",
)
@click.option("--threads", type=int, help="llama.cpp threads (0 = physical cores).")
@click.option("--n-gpu-layers", type=int, help="Layers on the GPU (-1 = all).")
@click.option("--ctx-size", type=int, help="Context length in tokens.")
@click.option("--theme", help="UI theme name.")
@click.option("--gpu-backend", type=click.Choice(["auto", "nvml", "replay", "none"]))
@click.option("--replay-file", type=click.Path(), help="Recorded NVML readings.")
@click.option("--read-only", is_flag=True, default=None, help="Disable every on-chain action.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def main_group(
    ctx: click.Context, /, config_file: Path | None, headless: bool, **flags: Any
) -> None:
    """Sell LLM inference on the Fabstir marketplace from your terminal."""
    ctx.obj = Settings(config_file, flags)
    if ctx.invoked_subcommand is None:
        ctx.exit(_run_node(ctx, headless=headless))


def _run_node(
    ctx: click.Context,
    *,
    headless: bool,
    demo: bool = False,
    once: bool = False,
    auto: bool = False,
    duration_s: float | None = None,
) -> int:
    """The node (or the demo: its devnet, key and clients first) until it stops."""
    from fabstir_tui.commands.run_node import DemoRefused, demo_layer, serve

    if not demo:
        return serve(_config(ctx), headless=headless)
    try:
        extra, chain, model = demo_layer(_loaded(ctx), ctx.obj.cli, headless, once, auto)
    except DemoRefused as exc:
        return fail(str(exc), exc.code)
    try:
        config = _config(ctx, extra)
        return serve(
            config, headless=headless, model=model, once=once, chain=chain, duration_s=duration_s
        )
    finally:
        if chain is not None:  # the node has stopped by now: anvil goes last
            chain.stop()


@main_group.command()
@click.option("--headless", is_flag=True, help="No screen: load, run one prompt, keep serving.")
@click.option("--once", is_flag=True, help="With --headless: exit after the demo prompt.")
@click.option(
    "--auto", is_flag=True, help="Claim the clients' jobs by policy (default: you press c)."
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    help="With --headless: stop after this many seconds and print the summary.",
)
@click.pass_context
def demo(
    ctx: click.Context, headless: bool, once: bool, auto: bool, duration_s: float | None
) -> None:
    """Devnet, contracts, the node registered with the demo model, simulated clients posting
    jobs; approve them in the TUI with c, or by policy with --auto."""
    if duration_s is not None and not headless:
        ctx.exit(fail("--duration works with --headless only", EXIT_USAGE))
    ctx.exit(
        _run_node(ctx, headless=headless, demo=True, once=once, auto=auto, duration_s=duration_s)
    )


@main_group.command()
@click.option(
    "--block-time",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between blocks (0 = a block per transaction).",
)
@click.option("--chain-id", type=click.IntRange(min=1), default=31337, show_default=True)
@click.option(
    "--config-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the devnet config (default: <data dir>/devnet.toml).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout when ready.")
@click.pass_context
def devnet(
    ctx: click.Context, block_time: float, chain_id: int, config_out: Path | None, as_json: bool
) -> None:
    """Start anvil, deploy the contracts, write a devnet config, wait for Ctrl-C."""
    from fabstir_tui.commands.devnet import run_devnet

    ctx.exit(
        run_devnet(
            _config(ctx),
            block_time_s=block_time,
            chain_id=chain_id,
            config_out=config_out,
            as_json=as_json,
        )
    )


@main_group.group()
def models() -> None:
    """GGUF models on disk."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Models in the configured folders."""
    from fabstir_tui.commands.models import models_list

    ctx.exit(models_list(_config(ctx), as_json))


@models.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_inspect_cmd(ctx: click.Context, path: Path, as_json: bool) -> None:
    """Architecture, parameters, quantisation, context and SHA-256 of one file."""
    from fabstir_tui.commands.models import models_inspect

    ctx.exit(models_inspect(_config(ctx), path, as_json))


@models.command("run")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--prompt", required=True)
@click.option("--max-tokens", type=click.IntRange(1, 1_000_000), default=128, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 5), default=0.7, show_default=True)
@click.option("--seed", type=int, default=-1, help="-1 = random.")
@click.option("--raw", is_flag=True, help="Send the prompt as is, not through the chat template.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_run_cmd(
    ctx: click.Context,
    path: Path,
    prompt: str,
    max_tokens: int,
    temperature: float,
    seed: int,
    raw: bool,
    as_json: bool,
) -> None:
    """Load a model in a worker and stream a prompt's answer."""
    from fabstir_tui.commands.models import models_run

    ctx.exit(models_run(_config(ctx), path, prompt, max_tokens, temperature, seed, raw, as_json))


@main_group.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Pre-flight checks, each with a verdict and the fix."""
    from fabstir_tui.commands.doctor import run_doctor

    settings: Settings = ctx.obj
    try:
        loaded, error = settings.load(), None
    except ConfigError as exc:
        loaded, error = None, str(exc)
    ctx.exit(run_doctor(loaded, error, as_json))


@main_group.group("config")
def config_group() -> None:
    """The effective configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Every effective value and where it came from."""
    settings: Settings = ctx.obj
    try:
        loaded = settings.load()
    except ConfigError as exc:
        ctx.exit(fail(str(exc), EXIT_USAGE))
        return
    if as_json:
        emit_json(config_as_json(loaded))
    else:
        click.echo(format_config_show(loaded))


@main_group.group("p2p")
def p2p_group() -> None:
    """Talk to other nodes over libp2p."""


@p2p_group.command("info")
@click.argument("multiaddr")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the peer, dial included.",
)
@click.pass_context
def p2p_info_cmd(ctx: click.Context, multiaddr: str, as_json: bool, timeout_s: float) -> None:
    """Models, prices, GPU, capacity and API URL of the node at MULTIADDR (with /p2p/<id>)."""
    from fabstir_tui.commands.p2p import p2p_info

    ctx.exit(p2p_info(multiaddr, as_json, timeout_s))


@p2p_group.command("find")
@click.argument("model")
@click.option(
    "--bootstrap",
    "bootstrap",
    multiple=True,
    help="Peer to join the DHT through (multiaddr with /p2p/<id>); repeatable. "
    "Default: p2p.bootstrap from the config.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds for the whole lookup, dials included.",
)
@click.pass_context
def p2p_find_cmd(
    ctx: click.Context, model: str, bootstrap: tuple[str, ...], as_json: bool, timeout_s: float
) -> None:
    """Hosts serving MODEL (64-hex model id, 0x optional, or a GGUF file to hash), from the DHT."""
    from fabstir_tui.commands.p2p import p2p_find

    peers = list(bootstrap) if bootstrap else list(_config(ctx).p2p.bootstrap)
    ctx.exit(p2p_find(model, peers, as_json, timeout_s))


main_group.add_command(keys_group)
main_group.add_command(init_cmd)
main_group.add_command(verify_cmd)
main_group.add_command(status_cmd)


def main() -> None:
    """Console-script entry: an unexpected failure is one sentence, unless debugging."""
    try:
        main_group.main(standalone_mode=True)
    except Exception as exc:
        if os.environ.get("FABSTIR_DEBUG"):
            raise
        sys.exit(
            fail(
                f"internal error: {type(exc).__name__}: {exc} (rerun with FABSTIR_DEBUG=1 for "
                "the traceback and report it)"
            )
        )


if __name__ == "__main__":
    main()
