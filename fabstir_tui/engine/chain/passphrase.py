"""Where the keystore passphrase comes from: a file named by env, the OS keyring, or a prompt.

Order: $FABSTIR_PASSPHRASE_FILE, then a real OS keyring (service "fabstir-tui", username = the
checksummed address), then the caller's prompt (a hidden CLI prompt, or the TUI's own modal).
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fabstir_tui.engine.chain.wallet import WalletError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = [
    "KEYRING_SERVICE",
    "PASSPHRASE_FILE_ENV",
    "Passphrase",
    "PassphraseSource",
    "find_passphrase",
    "keyring_name",
    "no_passphrase_error",
    "obtain_passphrase",
    "passphrase_file",
    "read_passphrase_file",
    "real_keyring",
    "resolve_passphrase",
    "save_to_keyring",
]

PASSPHRASE_FILE_ENV = "FABSTIR_PASSPHRASE_FILE"
KEYRING_SERVICE = "fabstir-tui"
_MAX_FILE_BYTES = 64 * 1024
_log = logging.getLogger(__name__)

Warn = Callable[[str], None]
Prompt = Callable[[str], str]


class PassphraseSource(enum.Enum):
    """Which of the three ways supplied the passphrase."""

    FILE = "file"
    KEYRING = "keyring"
    PROMPT = "prompt"


@dataclass(frozen=True)
class Passphrase:
    """A passphrase and where it came from; its value never shows in a repr."""

    value: str = field(repr=False)
    source: PassphraseSource
    detail: str = ""

    def describe(self) -> str:
        """A phrase for the operator: 'passphrase file /x ($FABSTIR_PASSPHRASE_FILE)' etc."""
        if self.source is PassphraseSource.FILE:
            return f"passphrase file {self.detail} (${PASSPHRASE_FILE_ENV})"
        if self.source is PassphraseSource.KEYRING:
            return f"OS keyring ({self.detail})" if self.detail else "OS keyring"
        return "prompt"


def passphrase_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The file $FABSTIR_PASSPHRASE_FILE names, if it names one."""
    named = (os.environ if env is None else env).get(PASSPHRASE_FILE_ENV, "")
    return Path(named).expanduser() if named else None


def read_passphrase_file(path: Path, *, warn: Warn | None = None) -> str:
    """The file's first line without its newline; a WalletError if missing or empty."""
    where = f"${PASSPHRASE_FILE_ENV} names {path}"
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise WalletError(f"{where}, which is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES)
    except FileNotFoundError:
        raise WalletError(f"{where}, which does not exist; create it or unset it") from None
    except OSError as exc:
        raise WalletError(f"{where}, which cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        (warn or _log.warning)(
            f"passphrase file {path} is readable by other users (mode "
            f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WalletError(f"{where}, which is not UTF-8 text") from None
    first = text.splitlines()[0] if text else ""
    if not first:
        raise WalletError(f"{where}, which is empty; its first line must hold the passphrase")
    return first


def real_keyring() -> KeyringBackend | None:
    """The OS keyring backend if a real one exists (not fail/null, not an empty chain)."""
    try:
        import keyring
        from keyring.backends import chainer, fail, null

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring | null.Keyring):
            return None
        if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
            return None
        # keyrings.alt's file backends keep the secret next to the keystore: no protection.
        if type(backend).__module__.startswith("keyrings.alt"):
            return None
        return backend if float(backend.priority) > 0 else None
    except Exception:
        return None


def keyring_name(backend: KeyringBackend) -> str:
    """The backend's human name, e.g. 'SecretService Keyring'."""
    return str(getattr(backend, "name", type(backend).__name__))


def find_passphrase(
    address: str,
    *,
    env: Mapping[str, str] | None = None,
    warn: Warn | None = None,
) -> Passphrase | None:
    """The passphrase from the file or keyring with its source; None: the caller must prompt."""
    path = passphrase_file(env)
    if path is not None:
        value = read_passphrase_file(path, warn=warn)
        return Passphrase(value, PassphraseSource.FILE, str(path))
    backend = real_keyring()
    if backend is None:
        return None
    try:
        stored = backend.get_password(KEYRING_SERVICE, address)
    except Exception as exc:
        # A locked or unreachable keyring is not fatal: the prompt still works.
        (warn or _log.warning)(
            f"could not read the OS keyring ({keyring_name(backend)}: {type(exc).__name__}); "
            "asking for the passphrase instead"
        )
        return None
    if not stored:
        return None
    return Passphrase(stored, PassphraseSource.KEYRING, keyring_name(backend))


def resolve_passphrase(
    address: str, *, env: Mapping[str, str] | None = None, warn: Warn | None = None
) -> str | None:
    """The passphrase from the file or keyring; None when the caller must prompt."""
    found = find_passphrase(address, env=env, warn=warn)
    return found.value if found is not None else None


def no_passphrase_error(address: str) -> WalletError:
    """The error when nothing can supply the passphrase, naming all three ways."""
    return WalletError(
        f"no passphrase for key {address}: set ${PASSPHRASE_FILE_ENV} to a file (mode 0600) "
        "whose first line is the passphrase, or store it in the OS keyring "
        f"(service {KEYRING_SERVICE!r}, username = the address; `fabstir-tui keys new "
        "--save-to-keyring` does this), or run in a terminal to be prompted"
    )


def obtain_passphrase(
    address: str,
    *,
    prompt: Prompt | None,
    env: Mapping[str, str] | None = None,
    warn: Warn | None = None,
) -> Passphrase:
    """File, keyring, then `prompt(question)` (None = no terminal): a WalletError if none."""
    found = find_passphrase(address, env=env, warn=warn)
    if found is not None:
        return found
    if prompt is None:
        raise no_passphrase_error(address)
    value = prompt(f"Passphrase for {address}")
    if not value:
        raise WalletError("no passphrase given")
    return Passphrase(value, PassphraseSource.PROMPT)


def save_to_keyring(address: str, passphrase: str) -> str:
    """Store the passphrase in the real OS keyring; returns its name, or raises WalletError."""
    backend = real_keyring()
    if backend is None:
        raise WalletError(
            "no usable OS keyring here (common over SSH without a desktop session): "
            f"use ${PASSPHRASE_FILE_ENV} with a mode-0600 file, or type the passphrase when asked"
        )
    try:
        backend.set_password(KEYRING_SERVICE, address, passphrase)
    except Exception as exc:
        raise WalletError(
            f"the OS keyring ({keyring_name(backend)}) refused to store the passphrase: "
            f"{type(exc).__name__}"
        ) from None
    return keyring_name(backend)
