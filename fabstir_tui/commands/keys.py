"""`fabstir-tui keys new|import|address` and `init`: the node's key and the first-run setup.

A private key is read only from stdin or a hidden prompt, never from the command line, and
neither it nor the passphrase is ever printed, logged or put in an error message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, emit_json, fail, say
from fabstir_tui.config import ConfigError, LoadedConfig, default_config_file, load_config

if TYPE_CHECKING:
    from fabstir_tui.engine.chain.passphrase import Passphrase, Prompt

__all__ = ["cli_passphrase", "init_cmd", "keys_group"]

DEVNET_CHAIN_ID = 31337


class _Exit(Exception):
    """Stop a command with one sentence and an exit code (DESIGN §10)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _warn(message: str) -> None:
    say(f"warning: {message}")


def _stdin_is_tty() -> bool:
    """Whether a person can answer a prompt on stdin."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def cli_prompt() -> Prompt | None:
    """A hidden-input prompt when stdin is a terminal, else None (no one to ask)."""
    if not _stdin_is_tty():
        return None
    return lambda question: str(click.prompt(question, hide_input=True, err=True))


def cli_passphrase(address: str, env: Mapping[str, str] | None = None) -> Passphrase:
    """The unlock passphrase for CLI commands: file, keyring, then a hidden prompt."""
    from fabstir_tui.engine.chain.passphrase import obtain_passphrase

    return obtain_passphrase(address, prompt=cli_prompt(), env=env, warn=_warn)


def _run(work: Any, *args: Any) -> int:
    """Run a command body, turning _Exit and WalletError into one line on stderr."""
    from fabstir_tui.engine.chain.wallet import WalletError

    try:
        code: int = work(*args)
        return code
    except _Exit as exc:
        return fail(str(exc), exc.code)
    except WalletError as exc:
        return fail(str(exc), EXIT_FAILED)


def _load(ctx: click.Context) -> LoadedConfig:
    """The effective config (flags, env, file), or _Exit 2 with the config problem."""
    try:
        loaded: LoadedConfig = ctx.obj.load()
        return loaded
    except ConfigError as exc:
        raise _Exit(str(exc), EXIT_USAGE) from None


def _new_passphrase(env: Mapping[str, str]) -> Passphrase:
    """A passphrase for a new keystore: the env-named file, or typed twice at a terminal."""
    from fabstir_tui.engine.chain.passphrase import (
        PASSPHRASE_FILE_ENV,
        Passphrase,
        PassphraseSource,
        passphrase_file,
        read_passphrase_file,
    )
    from fabstir_tui.engine.chain.wallet import WalletError

    path = passphrase_file(env)
    if path is not None:
        try:
            value = read_passphrase_file(path, warn=_warn)
        except WalletError as exc:
            raise _Exit(str(exc), EXIT_USAGE) from None
        return Passphrase(value, PassphraseSource.FILE, str(path))
    if not _stdin_is_tty():
        raise _Exit(
            f"no passphrase to encrypt the key with: set ${PASSPHRASE_FILE_ENV} to a file "
            "(mode 0600) whose first line is the passphrase, or run this in a terminal",
            EXIT_USAGE,
        )
    value = str(click.prompt("New passphrase", hide_input=True, confirmation_prompt=True, err=True))
    if len(value) < 8:
        _warn("a passphrase shorter than 8 characters is easy to guess from a stolen keystore")
    return Passphrase(value, PassphraseSource.PROMPT)


def _check_keyring(wanted: bool) -> None:
    """Refuse --save-to-keyring up front, before anything is written, when there is no keyring."""
    if not wanted:
        return
    from fabstir_tui.engine.chain.passphrase import PASSPHRASE_FILE_ENV, real_keyring

    if real_keyring() is None:
        raise _Exit(
            "--save-to-keyring: no usable OS keyring here (common over SSH without a desktop "
            f"session); use ${PASSPHRASE_FILE_ENV} with a mode-0600 file, or the prompt"
        )


def _refuse_existing_keystore(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise _Exit(
            f"a keystore already exists at {path}; move it away first if you really want "
            "another key (without a backup its funds would be lost)"
        )


def _make_keystore(
    path: Path, passphrase: Passphrase, private_key: bytes | None, save: bool
) -> tuple[str, str | None]:
    """Write the keystore (and the keyring entry if asked); returns (address, keyring name)."""
    from fabstir_tui.engine.chain.passphrase import save_to_keyring
    from fabstir_tui.engine.chain.wallet import create_keystore

    say(f"encrypting the key to {path} (scrypt, a few seconds)…")
    address = create_keystore(path, passphrase.value, private_key=private_key)
    keyring = save_to_keyring(address, passphrase.value) if save else None
    say(f"keystore written: {path} (mode 0600); back it up, and keep the passphrase safe:")
    say("without both, the key and its funds are lost")
    if keyring:
        say(f"passphrase saved in the OS keyring ({keyring}); the node unlocks without asking")
    return address, keyring


def _report_key(address: str, path: Path, keyring: str | None, as_json: bool) -> int:
    if as_json:
        emit_json({"address": address, "keystore": str(path), "keyring": keyring})
    else:
        click.echo(address)
    say(f"next: fund {address} with a little ETH for gas")
    return EXIT_OK


def _keys_new(ctx: click.Context, save: bool, as_json: bool) -> int:
    from fabstir_tui.engine.chain.wallet import keystore_path

    path = keystore_path(_load(ctx).config)
    _refuse_existing_keystore(path)
    _check_keyring(save)
    passphrase = _new_passphrase(os.environ)
    address, keyring = _make_keystore(path, passphrase, None, save)
    return _report_key(address, path, keyring, as_json)


def _read_private_key() -> bytes:
    """The key from stdin (piped) or a hidden prompt; errors never echo it."""
    from fabstir_tui.engine.chain.wallet import WalletError, parse_private_key

    if _stdin_is_tty():
        text = str(click.prompt("Private key (hex, hidden)", hide_input=True, err=True))
    else:
        text = sys.stdin.read(4096)
    if not text.strip():
        raise _Exit("no private key given on stdin", EXIT_USAGE)
    try:
        return parse_private_key(text)
    except WalletError as exc:
        raise _Exit(str(exc), EXIT_USAGE) from None


def _keys_import(ctx: click.Context, save: bool, as_json: bool) -> int:
    from fabstir_tui.engine.chain.passphrase import PASSPHRASE_FILE_ENV, passphrase_file
    from fabstir_tui.engine.chain.wallet import keystore_path

    path = keystore_path(_load(ctx).config)
    _refuse_existing_keystore(path)
    _check_keyring(save)
    if passphrase_file(os.environ) is None and not _stdin_is_tty():
        raise _Exit(
            f"stdin carries the key, so the passphrase must come from ${PASSPHRASE_FILE_ENV} "
            "(a mode-0600 file whose first line is the passphrase)",
            EXIT_USAGE,
        )
    key = _read_private_key()
    passphrase = _new_passphrase(os.environ)
    address, keyring = _make_keystore(path, passphrase, key, save)
    return _report_key(address, path, keyring, as_json)


def _keys_address(ctx: click.Context, as_json: bool) -> int:
    from fabstir_tui.engine.chain.wallet import keystore_path, keystore_warning, read_address

    path = keystore_path(_load(ctx).config)
    address = read_address(path)
    warning = keystore_warning(path)
    if warning:
        _warn(warning)
    if as_json:
        emit_json({"address": address, "keystore": str(path)})
    else:
        click.echo(address)
    return EXIT_OK


@click.group("keys")
def keys_group() -> None:
    """The node's key, kept in an encrypted keystore."""


@keys_group.command("new")
@click.option("--save-to-keyring", is_flag=True, help="Also keep the passphrase in the OS keyring.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_new_cmd(ctx: click.Context, save_to_keyring: bool, as_json: bool) -> None:
    """Create a key and its keystore; passphrase from $FABSTIR_PASSPHRASE_FILE or a prompt."""
    ctx.exit(_run(_keys_new, ctx, save_to_keyring, as_json))


@keys_group.command("import")
@click.option("--save-to-keyring", is_flag=True, help="Also keep the passphrase in the OS keyring.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_import_cmd(ctx: click.Context, save_to_keyring: bool, as_json: bool) -> None:
    """Import a hex private key read from stdin or a hidden prompt (never an argument)."""
    ctx.exit(_run(_keys_import, ctx, save_to_keyring, as_json))


@keys_group.command("address")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_address_cmd(ctx: click.Context, as_json: bool) -> None:
    """The keystore's address, read without the passphrase."""
    ctx.exit(_run(_keys_address, ctx, as_json))


# --- init ---------------------------------------------------------------------------------


def _toml(value: object) -> str:
    """A TOML value for a path, string, list or int (JSON strings are valid TOML strings)."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


def _config_text(loaded: LoadedConfig, models_dirs: list[Path], keystore: Path) -> str:
    """The commented first config file."""
    chain = loaded.config.chain
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return f"""\
# fabstir-tui configuration, written by `fabstir-tui init` on {today}.
# Precedence: defaults < this file < FABSTIR_* environment variables < command-line flags.
# `fabstir-tui config show` prints every effective value and where it came from.
# Relative paths are relative to this file's folder.

[node]
# Shown to clients and in the TUI.
# name = "fabstir-node"
# true disables every on-chain action (register, claim, withdraw).
# read_only = false

[paths]
# Store, caches, node state and (unless chain.keystore says otherwise) the keystore.
data_dir = {_toml(loaded.config.paths.data_dir)}
# Folders scanned for GGUF models.
models_dirs = {_toml(models_dirs)}

[chain]
# 31337 is a local devnet: `fabstir-tui devnet` starts one, deploys the contracts and
# prints its RPC URL and contract addresses. Base Sepolia is 84532.
chain_id = {chain.chain_id}
# HTTP(S) RPC URLs, tried in order; empty = the chain side is off.
rpc_urls = {_toml(list(chain.rpc_urls))}
# Contract addresses (0x...), from `fabstir-tui devnet` or the network's deployment.
# node_registry = ""
# model_registry = ""
# job_marketplace = ""
# host_earnings = ""
# payment_token = ""
# The encrypted key (eth-account v3 keystore); default <data_dir>/keystore.json.
# keystore = {_toml(keystore)}
"""


def _write_config(path: Path, text: str) -> None:
    """Create the config file; O_EXCL makes 'never overwrite' hold even against a race."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: an RPC URL in it may carry a provider API key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _Exit(f"config file {path} already exists; edit it, or move it away") from None
    except OSError as exc:
        raise _Exit(f"cannot create config file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _init_target(ctx: click.Context) -> Path:
    """--config, else $FABSTIR_CONFIG, else the platform's default config file."""
    named = ctx.obj.config_file or os.environ.get("FABSTIR_CONFIG") or default_config_file()
    return Path(named).expanduser().absolute()


def _init(
    ctx: click.Context, rpc_urls: tuple[str, ...], chain_id: int, save: bool, as_json: bool
) -> int:
    from fabstir_tui.engine.chain.wallet import keystore_path, read_address

    target = _init_target(ctx)
    if target.exists() or target.is_symlink():
        raise _Exit(
            f"config file {target} already exists; edit it (or move it away to start over); "
            "`fabstir-tui config show` prints the effective values"
        )
    cli: dict[str, object] = {**ctx.obj.cli, "chain.chain_id": chain_id}
    if rpc_urls:
        cli["chain.rpc_urls"] = list(rpc_urls)
    env = {k: v for k, v in os.environ.items() if k != "FABSTIR_CONFIG"}
    try:
        loaded = load_config(None, env=env, cli=cli, default_file=target)
    except ConfigError as exc:
        raise _Exit(str(exc), EXIT_USAGE) from None
    data_dir = loaded.config.paths.data_dir.expanduser().absolute()
    named = loaded.sources.get("paths.models_dirs", "default") != "default"
    models_dirs = list(loaded.config.paths.models_dirs) if named else [data_dir / "models"]
    keystore = keystore_path(loaded.config)
    have_key = keystore.exists() or keystore.is_symlink()
    passphrase: Passphrase | None = None
    address = read_address(keystore) if have_key else ""
    if have_key:
        say(f"using the existing keystore {keystore}")
        if save:
            _warn("--save-to-keyring only applies to a new keystore; nothing was saved")
    else:
        _check_keyring(save)
        passphrase = _new_passphrase(os.environ)
    _write_config(target, _config_text(loaded, models_dirs, keystore))
    say(f"config written: {target}")
    keyring = None
    if passphrase is not None:
        address, keyring = _make_keystore(keystore, passphrase, None, save)
    for folder in (data_dir, *models_dirs):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            _warn(f"cannot create folder {folder}: {exc.strerror}")
    steps = [
        f"fund {address} with a little ETH for gas",
        "for a local chain: `fabstir-tui devnet` (anvil + the contracts + a devnet config)",
        f"put GGUF models in {models_dirs[0]}",
        "start the node with `fabstir-tui` and register it from the TUI",
    ]
    if as_json:
        emit_json(
            {
                "config_file": str(target),
                "data_dir": str(data_dir),
                "models_dirs": [str(p) for p in models_dirs],
                "keystore": str(keystore),
                "keystore_created": not have_key,
                "address": address,
                "keyring": keyring,
                "next_steps": steps,
            }
        )
    say("next steps:")
    for number, step in enumerate(steps, 1):
        say(f"  {number}. {step}")
    return EXIT_OK


@click.command("init")
@click.option("--rpc-url", "rpc_urls", multiple=True, help="HTTP(S) RPC URL (repeatable).")
@click.option("--chain-id", type=click.IntRange(min=1), default=DEVNET_CHAIN_ID, show_default=True)
@click.option("--save-to-keyring", is_flag=True, help="Keep the passphrase in the OS keyring.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init_cmd(
    ctx: click.Context,
    rpc_urls: tuple[str, ...],
    chain_id: int,
    save_to_keyring: bool,
    as_json: bool,
) -> None:
    """First-run setup: a commented config file, a keystore, and what to do next."""
    ctx.exit(_run(_init, ctx, rpc_urls, chain_id, save_to_keyring, as_json))
