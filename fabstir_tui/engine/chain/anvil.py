"""A local anvil chain, run in its own process group so that stop() leaves nothing behind."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

# anvil's own default; deterministic so devnet keys and addresses are the same on every run.
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_ENV = "FABSTIR_ANVIL"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
_PLATFORM_PACKAGES = {
    ("Linux", "x86_64"): "anvil-linux-amd64",
    ("Linux", "aarch64"): "anvil-linux-arm64",
    ("Darwin", "x86_64"): "anvil-darwin-amd64",
    ("Darwin", "arm64"): "anvil-darwin-arm64",
}
_LISTENING = re.compile(r"Listening on (\S+):(\d+)")
_TAIL_LINES = 20


class AnvilError(RuntimeError):
    """anvil is missing, died or never answered; the message says what to do about it."""


class RpcError(RuntimeError):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error


def anvil_account(index: int, mnemonic: str = DEFAULT_MNEMONIC) -> LocalAccount:
    """anvil's public test account `index` (BIP-44 m/44'/60'/0'/0/index of its mnemonic)."""
    from eth_account import Account  # costly import; only the devnet and tests need it

    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def find_anvil(root: Path | None = None) -> Path:
    """The anvil binary: $FABSTIR_ANVIL for operators, else the pinned one in node_modules."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AnvilError(f"{ANVIL_ENV}={override} is not an executable file")
        return path
    key = (platform.system(), platform.machine())
    package = _PLATFORM_PACKAGES.get(key)
    if package is None:
        raise AnvilError(f"no pinned anvil build for {key[0]} {key[1]}; set {ANVIL_ENV}")
    scope = (root or PROJECT_ROOT) / "node_modules" / "@foundry-rs"
    # The platform package npm installs; else where the wrapper's postinstall downloads it.
    candidates = [scope / package / "bin" / "anvil", scope / "anvil" / "anvil"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise AnvilError(
        f"anvil not found at {candidates[0]}: run `make bootstrap` (npm ci) or set {ANVIL_ENV}"
    )


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10.0) -> Any:
    """One JSON-RPC call over stdlib HTTP, so tests and the devnet need no web3 to drive anvil."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RpcError(method, reply["error"])
    return reply["result"]


class Anvil:
    """One anvil process on 127.0.0.1 and a free port that anvil picks itself (--port 0)."""

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        accounts: int = 10,
        balance_eth: int = 10_000,
        block_time: float | None = None,
        mnemonic: str = DEFAULT_MNEMONIC,
        binary: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.chain_id = chain_id
        self.accounts = accounts
        self.balance_eth = balance_eth
        self.block_time = block_time
        self.mnemonic = mnemonic
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._port_seen = threading.Event()
        self._readers: list[threading.Thread] = []

    def command(self, binary: Path) -> list[str]:
        """The argument list; the mnemonic is public test data, so argv is fine for it."""
        args = [str(binary), "--host", "127.0.0.1", "--port", "0"]
        args += ["--chain-id", str(self.chain_id), "--accounts", str(self.accounts)]
        args += ["--balance", str(self.balance_eth), "--mnemonic", self.mnemonic]
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        return args

    def start(self) -> Anvil:
        """Start anvil and return once it answers eth_chainId, or raise with its last words."""
        if self._proc is not None:
            raise AnvilError("anvil already started")
        binary = self.binary if self.binary is not None else find_anvil()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise AnvilError(f"anvil not found at {binary}: run `make bootstrap` (npm ci)")
        self._proc = subprocess.Popen(
            self.command(binary),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for stream in (self._proc.stdout, self._proc.stderr):
            reader = threading.Thread(target=self._drain, args=(stream,), daemon=True)
            reader.start()
            self._readers.append(reader)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self, stream: IO[str]) -> None:
        """Keep anvil's pipes empty (it logs every request) and catch the port it bound."""
        for line in stream:
            self._tail.append(line.rstrip())
            match = _LISTENING.search(line)
            if match and self._port is None:
                self._port = int(match.group(2))
                self._port_seen.set()

    def _wait_ready(self) -> None:
        """Poll until eth_chainId answers; a dead or silent anvil is an error quoting its output."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                for reader in self._readers:
                    reader.join(timeout=1.0)
                raise AnvilError(
                    f"anvil exited with code {self._proc.returncode}:\n{self.output_tail()}"
                )
            if self._port_seen.wait(timeout=0.02):
                try:
                    rpc(self.http_url, "eth_chainId", timeout=1.0)
                    return
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.02)
        raise AnvilError(
            f"anvil did not answer within {self.startup_timeout} s:\n{self.output_tail()}"
        )

    def output_tail(self) -> str:
        """anvil's last lines of output, for error messages."""
        return "\n".join(self._tail) or "(no output)"

    @property
    def port(self) -> int:
        """The TCP port anvil bound."""
        if self._port is None:
            raise AnvilError("anvil is not running")
        return self._port

    @property
    def http_url(self) -> str:
        """The HTTP JSON-RPC endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint (anvil serves both on one port)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The anvil process id (also its process group id)."""
        if self._proc is None:
            raise AnvilError("anvil is not running")
        return self._proc.pid

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """A JSON-RPC call against this anvil."""
        return rpc(self.http_url, method, params)

    def snapshot(self) -> str:
        """Take an EVM snapshot; revert() to it restores the chain state."""
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        """Restore the chain to a snapshot (which anvil then discards)."""
        if self.rpc("evm_revert", [snapshot_id]) is not True:
            raise AnvilError(f"evm_revert refused snapshot {snapshot_id}")

    def mine(self, blocks: int = 1) -> None:
        """Mine blocks now, whatever the block time."""
        self.rpc("anvil_mine", [hex(blocks)])

    def increase_time(self, seconds: int) -> None:
        """Move the chain clock forward, for deadlines and dispute windows."""
        self.rpc("evm_increaseTime", [seconds])

    def block_number(self) -> int:
        """The latest block number."""
        return int(self.rpc("eth_blockNumber"), 16)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the whole process group, wait, and kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:  # reaped: its pid may belong to someone else now
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        self._readers.clear()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._port = None
        self._port_seen.clear()

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
