"""The node's key: an eth-account v3 keystore on disk, its address readable without a passphrase.

Secrets (the private key, the passphrase) never reach a log, an exception message, a repr or
an exception's chained cause: every error here is raised `from None` with a fixed sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.address import is_hex_address, to_checksum_address

from fabstir_tui.config import Config

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = [
    "KEYSTORE_NAME",
    "ProgressCallback",
    "WalletError",
    "create_keystore",
    "keystore_path",
    "keystore_warning",
    "new_private_key",
    "parse_private_key",
    "read_address",
    "unlock",
    "unlock_async",
]

KEYSTORE_NAME = "keystore.json"
# scrypt's cost makes decrypting take ~2 s; progress ticks keep a screen alive meanwhile.
DEFAULT_TICK_S = 0.1
_log = logging.getLogger(__name__)
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")

ProgressCallback = Callable[[float, bool], None]
"""progress(elapsed_s, done): (0.0, False) at start, ticks while scrypt runs, (t, True) at end."""


class WalletError(RuntimeError):
    """A key or keystore problem, as one sentence that says what to do; never carries a secret."""


def keystore_path(config: Config) -> Path:
    """Where the keystore lives: chain.keystore if set, else <paths.data_dir>/keystore.json."""
    if config.chain.keystore is not None:
        return Path(config.chain.keystore).expanduser()
    return Path(config.paths.data_dir).expanduser() / KEYSTORE_NAME


def read_address(path: Path) -> str:
    """The keystore's checksummed address, read from its `address` field without decrypting."""
    return _address_of(_read_document(path), path)


def keystore_warning(path: Path) -> str | None:
    """A warning when group or others may read the file: its ciphertext invites offline guessing."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    return None


def _warn_if_loose(path: Path, warn: Callable[[str], None] | None) -> None:
    """Unlocking still works (the file is encrypted) but the operator should tighten it."""
    warning = keystore_warning(path)
    if warning:
        (warn or _log.warning)(warning)


def new_private_key() -> bytes:
    """32 random bytes from the OS, inside the secp256k1 range (retried in the ~2^-128 case)."""
    while True:
        key = secrets.token_bytes(32)
        if _valid_scalar(key):
            return key


def parse_private_key(text: str) -> bytes:
    """The 32-byte key from 64 hex digits (0x optional); errors never echo what was typed."""
    cleaned = text.strip()
    if cleaned[:2] in ("0x", "0X"):
        cleaned = cleaned[2:]
    if not _HEX_KEY.fullmatch(cleaned):
        got = f"{len(cleaned)} characters" if len(cleaned) != 64 else "a non-hex character"
        raise WalletError(
            f"not a private key: expected 64 hex digits (32 bytes), optionally with 0x; got {got}"
        ) from None
    key = bytes.fromhex(cleaned)
    if not _valid_scalar(key):
        raise WalletError("not a private key: the value is outside the secp256k1 key range")
    return key


def create_keystore(
    path: Path,
    passphrase: str,
    *,
    private_key: bytes | None = None,
    scrypt_n: int | None = None,
) -> str:
    """Encrypt a key (new unless given) to `path`, never overwriting; returns the address.

    `scrypt_n` lowers the scrypt cost for tests only; the product uses eth-account's default.
    """
    if not passphrase:
        raise WalletError("the passphrase is empty; choose one (it encrypts the key on disk)")
    _refuse_existing(path)
    key = new_private_key() if private_key is None else private_key
    from eth_account import Account

    try:
        document = Account.encrypt(key, passphrase, kdf="scrypt", iterations=scrypt_n)
    except Exception:
        raise WalletError("could not encrypt the key (invalid key or scrypt parameters)") from None
    address = _address_of(document, path)
    _write_new_file(path, json.dumps(document, indent=2).encode() + b"\n")
    return address


def unlock(
    path: Path,
    passphrase: str,
    *,
    progress: ProgressCallback | None = None,
    tick_s: float = DEFAULT_TICK_S,
    warn: Callable[[str], None] | None = None,
) -> LocalAccount:
    """Decrypt the keystore in a worker thread, calling `progress` from this thread meanwhile.

    A keystore readable by others is unlocked, with a warning through `warn` (default: log).
    """
    document = _read_document(path)
    address = _address_of(document, path)
    _warn_if_loose(path, warn)
    box: list[Any] = []
    finished = threading.Event()

    def work() -> None:
        box.append(_decrypt(document, passphrase, path, address))
        finished.set()

    worker = threading.Thread(
        target=_guarded(work, box, finished), name="keystore-unlock", daemon=True
    )
    started = time.monotonic()
    if progress is not None:
        progress(0.0, False)
    worker.start()
    while not finished.wait(tick_s):
        if progress is not None:
            progress(time.monotonic() - started, False)
    worker.join()
    if progress is not None:
        progress(time.monotonic() - started, True)
    return _result(box)


async def unlock_async(
    path: Path,
    passphrase: str,
    *,
    progress: ProgressCallback | None = None,
    tick_s: float = DEFAULT_TICK_S,
    warn: Callable[[str], None] | None = None,
) -> LocalAccount:
    """unlock() for the asyncio engine: scrypt runs on a thread, `progress` on the event loop."""
    document = _read_document(path)
    address = _address_of(document, path)
    _warn_if_loose(path, warn)
    started = time.monotonic()
    if progress is not None:
        progress(0.0, False)
    task = asyncio.ensure_future(
        asyncio.to_thread(_decrypt_boxed, document, passphrase, path, address)
    )
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=tick_s)
            if done:
                break
            if progress is not None:
                progress(time.monotonic() - started, False)
    finally:
        if progress is not None:
            progress(time.monotonic() - started, True)
    return _result(task.result())


def _decrypt_boxed(
    document: dict[str, Any], passphrase: str, path: Path, address: str
) -> list[Any]:
    """_decrypt with its outcome boxed, so no exception carrying frames crosses the thread."""
    box: list[Any] = []
    _guarded(lambda: box.append(_decrypt(document, passphrase, path, address)), box, None)()
    return box


def _guarded(
    work: Callable[[], None], box: list[Any], finished: threading.Event | None
) -> Callable[[], None]:
    """Run `work`, putting a WalletError (never a raw exception) in `box` if it fails."""

    def run() -> None:
        try:
            work()
        except WalletError as exc:
            box.append(WalletError(str(exc)))
        except BaseException:
            box.append(WalletError("could not decrypt the keystore (unexpected error)"))
        finally:
            if finished is not None:
                finished.set()

    return run


def _result(box: list[Any]) -> LocalAccount:
    """The account from a worker's box, or its WalletError raised without any chained cause."""
    outcome = box[0] if box else WalletError("keystore decryption did not finish")
    if isinstance(outcome, WalletError):
        raise WalletError(str(outcome)) from None
    account: LocalAccount = outcome
    return account


def _decrypt(document: dict[str, Any], passphrase: str, path: Path, address: str) -> LocalAccount:
    """Run scrypt and AES; a MAC mismatch means the wrong passphrase."""
    from eth_account import Account

    try:
        key = Account.decrypt(document, passphrase)
    except ValueError as exc:
        wrong = "MAC mismatch" in str(exc)
        message = f"wrong passphrase for keystore {path}" if wrong else None
    except Exception:
        message = None
    else:
        account: LocalAccount = Account.from_key(key)
        if account.address != address:
            raise WalletError(
                f"keystore {path} decrypts to a different address than it names; "
                "it has been tampered with or damaged"
            ) from None
        return account
    raise WalletError(
        message or f"keystore {path} is damaged or not a v3 keystore (cannot decrypt it)"
    ) from None


def _valid_scalar(key: bytes) -> bool:
    """secp256k1 private keys are 1 .. n-1."""
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    return len(key) == 32 and 0 < int.from_bytes(key, "big") < order


def _address_of(document: dict[str, Any], path: Path) -> str:
    """The checksummed `address` of a v3 keystore document."""
    raw = document.get("address")
    if not isinstance(raw, str):
        raise WalletError(
            f"keystore {path} has no address field, so it is not a v3 keystore "
            "(move it away and run `fabstir-tui keys new` or `fabstir-tui keys import`)"
        )
    text = raw if raw.startswith(("0x", "0X")) else "0x" + raw
    if not is_hex_address(text):
        raise WalletError(f"keystore {path} has a malformed address field {raw[:60]!r}")
    return str(to_checksum_address(text))


def _read_document(path: Path) -> dict[str, Any]:
    """The keystore's JSON object, or a WalletError that names the file and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WalletError(
            f"no keystore at {path}: run `fabstir-tui keys new` to create a key "
            "(or `fabstir-tui keys import`, or `fabstir-tui init` for the whole first-run setup)"
        ) from None
    except IsADirectoryError:
        raise WalletError(f"keystore path {path} is a folder, not a keystore file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise WalletError(f"cannot read keystore {path}: {reason}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise WalletError(
            f"keystore {path} is not valid JSON; restore it from a backup, or move it away "
            "and run `fabstir-tui keys new`"
        ) from None
    if not isinstance(document, dict):
        raise WalletError(f"keystore {path} is not a JSON object, so it is not a v3 keystore")
    return document


def _refuse_existing(path: Path) -> None:
    """A keystore may be the only copy of a funded key: never replace one."""
    if path.exists() or path.is_symlink():
        raise WalletError(
            f"a keystore already exists at {path}; this would replace its key (and lose any "
            "funds without a backup): move it away first if you really want a new one"
        )


def _write_new_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file, mode 0600 from creation, atomically (temp, fsync, link)."""
    folder = path.parent
    if not folder.exists():
        try:
            folder.mkdir(parents=True, mode=0o700)
            os.chmod(folder, 0o700)
        except OSError as exc:
            raise WalletError(f"cannot create folder {folder}: {exc.strerror}") from None
    temp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise WalletError(f"cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temp, path)
    except OSError as exc:
        raise WalletError(f"cannot write keystore {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _fsync_folder(folder)


def _publish(temp: Path, path: Path) -> None:
    """Give the finished temp file its name; a hard link fails instead of replacing a file."""
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        pass
    except OSError:
        # Filesystems without hard links: a checked rename (racy only against ourselves).
        if not (path.exists() or path.is_symlink()):
            os.replace(temp, path)
            return
    _refuse_existing(path)
    raise WalletError(f"cannot write keystore {path}: it appeared and vanished while writing")


def _fsync_folder(folder: Path) -> None:
    """Make the new name durable; some platforms cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
