"""`fabstir-tui keys` and `init` as an operator runs them: exit codes, --json, no leaked secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pty
import select
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from click.testing import CliRunner
from keyring.backend import KeyringBackend

from fabstir_tui.cli import main_group
from fabstir_tui.engine.chain.passphrase import find_passphrase
from fabstir_tui.engine.chain.wallet import WalletError, read_address, unlock, unlock_async

EXE = Path(sys.executable).parent / "fabstir-tui"
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
PASS = "tr0ub4dor&3-fabstir"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private config/data home, so no test reads or writes the real one."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def pass_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(PASS + "\n")
    path.chmod(0o600)
    return path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABSTIR_")}
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_DATA_HOME=str(home / "data"),
        # The real "no keyring here" backend, whatever this machine has.
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    return {**env, **extra}


def run(home: Path, *args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env_for(home, **extra),
    )


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_keys_new_address_and_no_overwrite(home: Path, pass_file: Path) -> None:
    data = home / "d"
    missing = run(home, "--data-dir", str(data), "keys", "address")
    assert missing.returncode == 1 and "fabstir-tui keys new" in one_error_line(missing)

    res = run(
        home,
        "--data-dir",
        str(data),
        "keys",
        "new",
        "--json",
        FABSTIR_PASSPHRASE_FILE=str(pass_file),
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    keystore = data / "keystore.json"
    assert doc["keystore"] == str(keystore) and doc["keyring"] is None
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert unlock(keystore, PASS).address == doc["address"]

    shown = run(home, "--data-dir", str(data), "keys", "address", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["address"] == doc["address"]
    plain = run(home, "--data-dir", str(data), "keys", "address")
    assert plain.stdout.strip() == doc["address"]

    before = keystore.read_bytes()
    again = run(
        home, "--data-dir", str(data), "keys", "new", FABSTIR_PASSPHRASE_FILE=str(pass_file)
    )
    assert again.returncode == 1 and str(keystore) in one_error_line(again)
    assert keystore.read_bytes() == before


def test_keys_new_needs_a_passphrase_source(home: Path, tmp_path: Path) -> None:
    data = home / "d"
    res = run(home, "--data-dir", str(data), "keys", "new")
    assert res.returncode == 2 and "FABSTIR_PASSPHRASE_FILE" in one_error_line(res)
    gone = run(
        home, "--data-dir", str(data), "keys", "new", FABSTIR_PASSPHRASE_FILE=str(tmp_path / "no")
    )
    assert gone.returncode == 2 and "does not exist" in one_error_line(gone)
    assert not (data / "keystore.json").exists()


def test_save_to_keyring_refused_without_a_keyring(home: Path, pass_file: Path) -> None:
    data = home / "d"
    res = run(
        home,
        "--data-dir",
        str(data),
        "keys",
        "new",
        "--save-to-keyring",
        FABSTIR_PASSPHRASE_FILE=str(pass_file),
    )
    assert res.returncode == 1 and "no usable OS keyring" in one_error_line(res)
    assert not (data / "keystore.json").exists()


def test_keys_import_from_stdin(home: Path, pass_file: Path) -> None:
    data = home / "d"
    bad = KEY_HEX[:-2] + "zz"
    res = run(
        home,
        "--data-dir",
        str(data),
        "keys",
        "import",
        stdin=bad,
        FABSTIR_PASSPHRASE_FILE=str(pass_file),
    )
    assert res.returncode == 2 and "not a private key" in one_error_line(res)
    assert bad not in res.stderr + res.stdout and not (data / "keystore.json").exists()

    no_pass = run(home, "--data-dir", str(data), "keys", "import", stdin=KEY_HEX)
    assert no_pass.returncode == 2 and "FABSTIR_PASSPHRASE_FILE" in one_error_line(no_pass)

    good = run(
        home,
        "--data-dir",
        str(data),
        "keys",
        "import",
        "--json",
        stdin="0x" + KEY_HEX + "\n",
        FABSTIR_PASSPHRASE_FILE=str(pass_file),
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["address"] == KEY_ADDRESS
    assert KEY_HEX not in good.stdout + good.stderr


def test_keys_honour_config_file(home: Path, tmp_path: Path) -> None:
    keystore = tmp_path / "elsewhere" / "node-key.json"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[chain]\nkeystore = "{keystore}"\n')
    res = run(home, "--config", str(cfg), "keys", "address")
    assert res.returncode == 1 and str(keystore) in one_error_line(res)
    broken = tmp_path / "broken.toml"
    broken.write_text("[chain]\nkeystore = 5\n")
    assert run(home, "--config", str(broken), "keys", "address").returncode == 2


def test_init_writes_config_and_keystore_once(home: Path, pass_file: Path) -> None:
    res = run(home, "init", "--json", FABSTIR_PASSPHRASE_FILE=str(pass_file))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    config_file = home / "config" / "fabstir-tui" / "config.toml"
    keystore = home / "data" / "fabstir-tui" / "keystore.json"
    assert doc["config_file"] == str(config_file) and doc["keystore"] == str(keystore)
    assert doc["keystore_created"] is True and read_address(keystore) == doc["address"]
    assert any("fabstir-tui devnet" in step for step in doc["next_steps"])
    assert doc["address"] in res.stderr and "fabstir-tui devnet" in res.stderr
    text = config_file.read_text()
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600  # may hold a provider API key
    assert text.startswith("# ") and "[chain]" in text

    shown = run(home, "config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    values = json.loads(shown.stdout)
    assert values["chain.chain_id"] == {"value": 31337, "source": f"file {config_file}"}
    assert values["chain.rpc_urls"]["value"] == []
    assert values["paths.data_dir"]["value"] == str(home / "data" / "fabstir-tui")

    before = (config_file.read_bytes(), keystore.read_bytes())
    again = run(home, "init", FABSTIR_PASSPHRASE_FILE=str(pass_file))
    assert again.returncode == 1 and "already exists" in one_error_line(again)
    assert (config_file.read_bytes(), keystore.read_bytes()) == before


def test_init_with_config_path_reuses_a_keystore(
    home: Path, pass_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    keystore = data / "keystore.json"
    imported = run(
        home,
        "--data-dir",
        str(data),
        "keys",
        "import",
        stdin=KEY_HEX,
        FABSTIR_PASSPHRASE_FILE=str(pass_file),
    )
    assert imported.returncode == 0, imported.stderr
    before = keystore.read_bytes()
    cfg = tmp_path / "rig" / "fabstir.toml"
    bad = run(home, "--config", str(cfg), "--data-dir", str(data), "init", "--rpc-url", "ftp://x")
    assert bad.returncode == 2 and "http" in one_error_line(bad) and not cfg.exists()
    res = run(
        home,
        "--config",
        str(cfg),
        "--data-dir",
        str(data),
        "init",
        "--json",
        "--rpc-url",
        "http://127.0.0.1:8545",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["keystore_created"] is False and doc["address"] == KEY_ADDRESS
    assert keystore.read_bytes() == before
    shown = json.loads(run(home, "--config", str(cfg), "config", "show", "--json").stdout)
    assert shown["chain.rpc_urls"]["value"] == ["http://127.0.0.1:8545"]
    assert shown["paths.data_dir"]["value"] == str(data)


def _read_until(fd: int, marker: bytes, seen: bytearray, deadline: float) -> None:
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} before the deadline; got {bytes(seen)!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"stream closed before {marker!r}; got {bytes(seen)!r}"
        seen += chunk


def test_keys_new_prompts_on_a_terminal(home: Path) -> None:
    """A real pseudo-terminal on stdin: hidden prompt, typed twice, nothing echoed to output."""
    data = home / "d"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(EXE), "--data-dir", str(data), "keys", "new"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(home),
        start_new_session=True,  # no controlling terminal: getpass uses the pty on stdin
    )
    os.close(slave)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        seen = bytearray()
        deadline = time.monotonic() + 60
        # getpass writes the prompt's last space after it turns echo off and flushes input.
        _read_until(proc.stderr.fileno(), b"New passphrase: ", seen, deadline)
        os.write(master, PASS.encode() + b"\n")
        _read_until(proc.stderr.fileno(), b"confirmation: ", seen, deadline)
        os.write(master, PASS.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, bytes(seen) + err
    address = out.decode().strip()
    assert unlock(data / "keystore.json", PASS).address == address
    assert PASS.encode() not in out + err + bytes(seen)


class KeyringDouble(KeyringBackend):
    """Test double for the OS keyring (unreachable from here): an in-memory dict."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


@pytest.fixture
def keyring_double() -> Iterator[KeyringDouble]:
    before = keyring.get_keyring()
    double = KeyringDouble()
    keyring.set_keyring(double)
    yield double
    keyring.set_keyring(before)


def _formatted(exc: BaseException) -> str:
    """The whole traceback text, chained causes and contexts included."""
    return "".join(traceback.format_exception(exc))


def test_secrets_never_leak(
    home: Path,
    pass_file: Path,
    keyring_double: KeyringDouble,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole key flow, with every log record, output stream and traceback searched."""
    caplog.set_level(logging.DEBUG)  # root logger, every library
    for name, value in env_for(home).items():
        monkeypatch.setenv(name, value)
    for name in [k for k in os.environ if k.startswith("FABSTIR_")]:
        monkeypatch.delenv(name)
    runner = CliRunner()
    haystack: list[str] = []
    data = home / "d"

    def cli(*args: str, stdin: str = "", **env: str | None) -> int:
        result = runner.invoke(main_group, list(args), input=stdin, env=env)
        haystack.extend([result.stdout, result.stderr, repr(result)])
        if result.exc_info is not None and not isinstance(result.exception, SystemExit):
            haystack.append(_formatted(result.exc_info[1]))
        return result.exit_code

    pf = str(pass_file)
    malformed = KEY_HEX[:-3] + "xyz"
    assert (
        cli("--data-dir", str(data), "keys", "import", stdin=malformed, FABSTIR_PASSPHRASE_FILE=pf)
        == 2
    )
    args = ("--data-dir", str(data), "keys", "import", "--save-to-keyring", "--json")
    assert cli(*args, stdin=KEY_HEX + "\n", FABSTIR_PASSPHRASE_FILE=pf) == 0
    assert cli(*args, stdin=KEY_HEX.upper(), FABSTIR_PASSPHRASE_FILE=pf) == 1  # exists
    assert cli("--data-dir", str(data), "keys", "address", "--json") == 0
    # The hidden-prompt path: key, then the passphrase twice.
    monkeypatch.setattr("fabstir_tui.commands.keys._stdin_is_tty", lambda: True)
    typed = f"0x{KEY_HEX}\n{PASS}\n{PASS}\n"
    assert cli("--data-dir", str(home / "p"), "keys", "import", stdin=typed) == 0
    assert cli("--data-dir", str(home / "q"), "keys", "import", stdin=malformed + "\n") == 2

    keystore = data / "keystore.json"
    found = find_passphrase(KEY_ADDRESS, env={})
    assert found is not None and found.source.value == "keyring"
    haystack += [repr(found), found.describe()]
    account = unlock(
        keystore, found.value, progress=lambda t, d: logging.debug("unlock %s %s", t, d)
    )
    haystack.append(repr(account))
    assert account.address == KEY_ADDRESS
    for attempt in (
        lambda: unlock(keystore, PASS + "x"),
        lambda: asyncio.run(unlock_async(keystore, "wrong " + PASS)),
        lambda: unlock(home / "p" / "missing.json", PASS),
    ):
        with pytest.raises(WalletError) as info:
            attempt()
        haystack.append(_formatted(info.value))
    captured = capsys.readouterr()
    haystack += [captured.out, captured.err, caplog.text]
    haystack += [r.getMessage() for r in caplog.records]
    haystack += [keystore.read_text(), (home / "p" / "keystore.json").read_text()]

    text = "\n".join(haystack)
    assert "wrong passphrase for keystore" in text  # the sweep did see the errors
    for secret in (KEY_HEX, KEY_HEX.upper(), "0x" + KEY_HEX, KEY_HEX[8:40], malformed, PASS):
        assert secret not in text, f"a secret leaked: {secret[:6]}…"
