"""The keystore and passphrase sources: files, modes, errors, and the keyring boundary."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import chainer, fail, null

from fabstir_tui.config import load_config
from fabstir_tui.engine.chain.passphrase import (
    KEYRING_SERVICE,
    Passphrase,
    PassphraseSource,
    find_passphrase,
    obtain_passphrase,
    read_passphrase_file,
    real_keyring,
    resolve_passphrase,
    save_to_keyring,
)
from fabstir_tui.engine.chain.wallet import (
    WalletError,
    create_keystore,
    keystore_path,
    keystore_warning,
    parse_private_key,
    read_address,
    unlock,
    unlock_async,
)

# A cheap scrypt cost keeps the suite fast; test_default_scrypt_cost uses the real one.
CHEAP_N = 2**10
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
PASS = "correct horse battery staple"


class KeyringDouble(KeyringBackend):
    """Test double for the OS keyring (which this machine cannot reach): an in-memory dict."""

    priority = 1  # type: ignore[assignment]

    def __init__(self, fail_reads: bool = False) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}
        self.fail_reads = fail_reads

    def get_password(self, service: str, username: str) -> str | None:
        if self.fail_reads:
            raise RuntimeError("keyring is locked")
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


@pytest.fixture
def keyring_backend() -> Iterator[None]:
    """Restore whatever keyring backend was active after a test swaps it."""
    before = keyring.get_keyring()
    yield
    keyring.set_keyring(before)


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keystore.json"
    create_keystore(path, PASS, private_key=bytes.fromhex(KEY_HEX), scrypt_n=CHEAP_N)
    return path


def test_keystore_path_default_and_override(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, cli={"paths.data_dir": tmp_path}, default_file=tmp_path / "x")
    assert keystore_path(cfg.config) == tmp_path / "keystore.json"
    named = load_config(
        None, env={"FABSTIR_CHAIN__KEYSTORE": str(tmp_path / "k.json")}, default_file=tmp_path / "x"
    )
    assert keystore_path(named.config) == tmp_path / "k.json"


def test_created_with_mode_0600_in_a_0700_folder(keystore: Path) -> None:
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert stat.S_IMODE(keystore.parent.stat().st_mode) == 0o700
    assert [p.name for p in keystore.parent.iterdir()] == ["keystore.json"]  # no temp left
    assert read_address(keystore) == KEY_ADDRESS
    assert keystore_warning(keystore) is None


def test_never_overwrites(keystore: Path) -> None:
    before = keystore.read_bytes()
    with pytest.raises(WalletError, match="already exists.*move it away"):
        create_keystore(keystore, "other", scrypt_n=CHEAP_N)
    assert keystore.read_bytes() == before


def test_new_key_is_random_and_unlocks(tmp_path: Path) -> None:
    a = create_keystore(tmp_path / "a.json", PASS, scrypt_n=CHEAP_N)
    b = create_keystore(tmp_path / "b.json", PASS, scrypt_n=CHEAP_N)
    assert a != b
    assert unlock(tmp_path / "a.json", PASS).address == a


def test_default_scrypt_cost(tmp_path: Path) -> None:
    """The product's keystore uses eth-account's default scrypt parameters."""
    path = tmp_path / "keystore.json"
    address = create_keystore(path, PASS)
    params = json.loads(path.read_text())["crypto"]["kdfparams"]
    assert json.loads(path.read_text())["crypto"]["kdf"] == "scrypt"
    assert (params["n"], params["r"], params["p"]) == (262144, 8, 1)
    assert unlock(path, PASS).address == address


def test_unlock_reports_progress(keystore: Path) -> None:
    calls: list[tuple[float, bool]] = []
    account = unlock(keystore, PASS, progress=lambda t, done: calls.append((t, done)))
    assert account.address == KEY_ADDRESS and account.key.hex() == KEY_HEX
    assert calls[0] == (0.0, False) and calls[-1][1] is True
    assert [done for _, done in calls].count(True) == 1
    assert [t for t, _ in calls] == sorted(t for t, _ in calls)


async def test_unlock_async_reports_progress_on_the_loop(keystore: Path) -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, bool]] = []

    def progress(elapsed: float, done: bool) -> None:
        assert asyncio.get_running_loop() is loop
        calls.append((elapsed, done))

    account = await unlock_async(keystore, PASS, progress=progress)
    assert account.address == KEY_ADDRESS
    assert calls[0] == (0.0, False) and calls[-1][1] is True


def test_wrong_passphrase(keystore: Path) -> None:
    calls: list[bool] = []
    with pytest.raises(WalletError) as info:
        unlock(keystore, "nope", progress=lambda _t, done: calls.append(done))
    assert str(info.value) == f"wrong passphrase for keystore {keystore}"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert calls[-1] is True


async def test_wrong_passphrase_async(keystore: Path) -> None:
    with pytest.raises(WalletError, match="wrong passphrase for keystore"):
        await unlock_async(keystore, "nope")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no keystore at .*fabstir-tui keys new"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"version": 3}', "no address field"),
        ('{"address": "xyz"}', "malformed address"),
    ],
)
def test_read_address_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "keystore.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WalletError, match=message):
        read_address(path)


def test_damaged_keystore_does_not_decrypt(keystore: Path) -> None:
    doc = json.loads(keystore.read_text())
    del doc["crypto"]["ciphertext"]
    damaged = keystore.parent / "damaged.json"
    damaged.write_text(json.dumps(doc))
    with pytest.raises(WalletError, match="damaged or not a v3 keystore"):
        unlock(damaged, PASS)


def test_loose_keystore_mode_warns(keystore: Path) -> None:
    keystore.chmod(0o644)
    warning = keystore_warning(keystore)
    assert warning is not None and "chmod 600" in warning
    warnings: list[str] = []
    assert unlock(keystore, PASS, warn=warnings.append).address == KEY_ADDRESS
    assert warnings == [warning]


@pytest.mark.parametrize("text", [KEY_HEX, "0x" + KEY_HEX, KEY_HEX.upper(), f"  0X{KEY_HEX}\n"])
def test_parse_private_key_accepts(text: str) -> None:
    assert parse_private_key(text) == bytes.fromhex(KEY_HEX)


@pytest.mark.parametrize(
    "text",
    [KEY_HEX[:-1], KEY_HEX + "00", "0x" + "g" * 64, "0" * 64, "f" * 64, "not a key at all"],
)
def test_parse_private_key_rejects_without_echo(text: str) -> None:
    with pytest.raises(WalletError, match="not a private key") as info:
        parse_private_key(text)
    assert text.strip() not in str(info.value) and KEY_HEX[:16] not in str(info.value)


def test_passphrase_file_first_line(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_text(f"{PASS}\r\nsecond line\n")
    path.chmod(0o600)
    warnings: list[str] = []
    assert read_passphrase_file(path, warn=warnings.append) == PASS
    assert warnings == []
    found = find_passphrase(KEY_ADDRESS, env={"FABSTIR_PASSPHRASE_FILE": str(path)})
    assert found is not None and found.source is PassphraseSource.FILE
    assert str(path) in found.describe() and PASS not in repr(found)


def test_passphrase_file_readable_by_others_warns(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_text(PASS + "\n")
    path.chmod(0o644)
    warnings: list[str] = []
    assert read_passphrase_file(path, warn=warnings.append) == PASS
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and PASS not in warnings[0]


@pytest.mark.parametrize(
    ("content", "message"), [(None, "does not exist"), ("", "empty"), ("\nlater\n", "empty")]
)
def test_passphrase_file_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "pass"
    if content is not None:
        path.write_text(content)
    env = {"FABSTIR_PASSPHRASE_FILE": str(path)}
    with pytest.raises(WalletError, match=f"FABSTIR_PASSPHRASE_FILE names .*{message}"):
        resolve_passphrase(KEY_ADDRESS, env=env)


def test_no_real_keyring_means_prompt(keyring_backend: None) -> None:
    for backend in (fail.Keyring(), null.Keyring()):
        keyring.set_keyring(backend)
        assert real_keyring() is None
        assert resolve_passphrase(KEY_ADDRESS, env={}) is None
        with pytest.raises(WalletError, match="FABSTIR_PASSPHRASE_FILE.*keyring.*terminal"):
            obtain_passphrase(KEY_ADDRESS, prompt=None, env={})
        with pytest.raises(WalletError, match="no usable OS keyring"):
            save_to_keyring(KEY_ADDRESS, PASS)
    prompted = obtain_passphrase(KEY_ADDRESS, prompt=lambda q: PASS, env={})
    assert prompted == Passphrase(PASS, PassphraseSource.PROMPT) and prompted.describe() == "prompt"


def test_empty_chainer_is_not_a_keyring(
    keyring_backend: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [])
    keyring.set_keyring(chainer.ChainerBackend())
    assert real_keyring() is None


def test_keyring_round_trip(keyring_backend: None, tmp_path: Path) -> None:
    double = KeyringDouble()
    keyring.set_keyring(double)
    assert real_keyring() is double
    assert resolve_passphrase(KEY_ADDRESS, env={}) is None  # nothing stored yet
    save_to_keyring(KEY_ADDRESS, PASS)
    assert double.store == {(KEYRING_SERVICE, KEY_ADDRESS): PASS}
    found = find_passphrase(KEY_ADDRESS, env={})
    assert found is not None and found.source is PassphraseSource.KEYRING
    assert found.value == PASS and "keyring" in found.describe()
    # The env-named file wins over the keyring.
    path = tmp_path / "pass"
    path.write_text("from-file\n")
    path.chmod(0o600)
    assert resolve_passphrase(KEY_ADDRESS, env={"FABSTIR_PASSPHRASE_FILE": str(path)}) == (
        "from-file"
    )


def test_locked_keyring_falls_back_to_prompt(keyring_backend: None) -> None:
    keyring.set_keyring(KeyringDouble(fail_reads=True))
    warnings: list[str] = []
    assert resolve_passphrase(KEY_ADDRESS, env={}, warn=warnings.append) is None
    assert len(warnings) == 1 and "could not read the OS keyring" in warnings[0]
