"""Our node as a real subprocess for the benches: `fabstir-tui --config <toml> --headless`, or
the full Textual app in a pseudo-terminal (`tui=True`), with the client API on a free port.

The benches measure what an operator runs, so nothing here reaches into the engine: the node
is configured by a TOML file in a temporary folder, the operator key travels in the
environment (FABSTIR_API_KEY, never in a file or on the command line), readiness is GET
/health answering 200 (the model loaded), and the node is stopped by its process group
(SIGTERM, then SIGKILL after a grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TUI_COLUMNS, TUI_ROWS = 160, 48
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
_ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>PX^_\]][^\x07\x1b]*")


class NodeStartError(RuntimeError):
    """The node process died or never answered /health 200; the message carries its log tail."""


@dataclass
class NodeProc:
    """A running node subprocess: where its API is, its key, its pid and its output."""

    url: str
    api_key: str
    pid: int
    log_path: Path
    tui: bool
    process: subprocess.Popen[bytes] = field(repr=False)
    drained_bytes: list[int] = field(default_factory=lambda: [0], repr=False)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's output (escape sequences removed under the TUI)."""
        return log_tail(self.log_path, lines)

    @property
    def pty_bytes(self) -> int:
        """Bytes the TUI wrote to its terminal so far (0 when headless)."""
        return self.drained_bytes[0]


def log_tail(path: Path, lines: int = 40) -> str:
    """The log's last non-blank lines, terminal escapes removed (for an error message)."""
    try:
        data = path.read_bytes()[-256_000:]
    except OSError:
        return "(no log)"
    text = _ANSI.sub(b"", data).decode(errors="replace").replace("\r", "\n")
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cancel_on_sigterm() -> None:
    """SIGTERM (a timeout, CI) cancels the bench as Ctrl-C does, so every server it started
    is stopped and its folder removed."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def load_average() -> list[float]:
    """The 1/5/15-minute load averages, rounded: a busy machine explains a noisy figure."""
    return [round(x, 2) for x in os.getloadavg()]


def publish(report: dict[str, Any], out: Path, table: str) -> None:
    """Write the report's JSON to `out` and print its table and the load it ran under."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"(load average before {report['load_avg_before']}, after {report['load_avg_after']})")
    print(f"wrote {out}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (1000 sockets need more than 1024 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def node_toml(
    root: Path,
    model: Path,
    *,
    port: int,
    threads: int,
    slots: int,
    ctx: int,
    api: dict[str, Any],
    flash_attention: bool = True,
    batch: int = 512,
) -> str:
    """The node's config: API on loopback, the model loaded at start, no chain, no GPU (as
    every baseline: n_gpu_layers 0)."""
    sections: dict[str, dict[str, Any]] = {
        "paths": {
            "data_dir": root / "data",
            "cache_dir": root / "cache",
            "models_dirs": [root / "models"],
        },
        "inference": {
            "threads": threads,
            "slots": slots,
            "context_length": ctx,
            "batch_size": batch,
            "n_gpu_layers": 0,
            "flash_attention": flash_attention,
            "load_at_start": [root / "models" / model.name],
        },
        "telemetry": {"gpu_backend": "none"},
        "api": {"enabled": True, **api, "listen": f"127.0.0.1:{port}"},
    }
    out: list[str] = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        out.append("")
    return "\n".join(out)


def _drain(master: int, log: Path, counter: list[int]) -> None:
    """Read the TUI's terminal until it closes, so the app never blocks on a full pty."""
    with log.open("ab") as sink:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave end closed, the app is gone
                return
            if not chunk:
                return
            counter[0] += len(chunk)
            sink.write(chunk)


def _spawn(
    root: Path, config: Path, env: dict[str, str], *, tui: bool, log: Path
) -> tuple[subprocess.Popen[bytes], list[int], tuple[int, threading.Thread] | None]:
    exe = Path(sys.executable).with_name("fabstir-tui")
    command = [str(exe), "--config", str(config)]
    raise_nofile_limit()  # the child inherits the raised soft limit
    counter = [0]
    if not tui:
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*command, "--headless"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        return process, counter, None
    master, slave = pty.openpty()
    size = struct.pack("HHHH", TUI_ROWS, TUI_COLUMNS, 0, 0)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(TUI_COLUMNS), "LINES": str(TUI_ROWS)}
    try:
        process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=root,
            start_new_session=True,  # setsid: the pty becomes its controlling terminal
        )
    finally:
        os.close(slave)
    thread = threading.Thread(target=_drain, args=(master, log, counter), daemon=True)
    thread.start()
    return process, counter, (master, thread)


async def _wait_ready(proc: NodeProc, timeout_s: float) -> None:
    """Until GET /health answers 200 (the model is loaded), or NodeStartError with the log."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            code = proc.process.poll()
            if code is not None:
                raise NodeStartError(
                    f"the node exited with {code} before it was ready; its log:\n" + proc.log_tail()
                )
            try:
                async with session.get(proc.url + "/health") as response:
                    if response.status == 200:
                        return
                    last = f"{response.status} {await response.text()}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
    raise NodeStartError(
        f"the node did not answer /health 200 within {timeout_s:.0f} s (last: {last}); "
        f"its log:\n{proc.log_tail()}"
    )


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a server's process group (it was started in a session of its own), SIGKILL
    it after the grace."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _screen_seen(log: Path) -> bool:
    """The TUI drew the dashboard: escape sequences, its tab bar and the node's name."""
    try:
        data = log.read_bytes()
    except OSError:
        return False
    plain = _ANSI.sub(b"", data)
    return b"\x1b[" in data and all(mark in plain for mark in (b"Dash", b"Quit", b"fabstir-node"))


@contextlib.asynccontextmanager
async def running_node(
    model: Path,
    *,
    threads: int,
    slots: int = 1,
    tui: bool = False,
    api: dict[str, Any] | None = None,
    ctx: int = 2048,
    flash_attention: bool = True,
    batch: int = 512,
) -> AsyncIterator[NodeProc]:
    """Our node in a subprocess with `model` loaded and the API on a free loopback port;
    under the Textual app in a pty when `tui`. Stopped (its whole process group) on exit."""
    root = Path(tempfile.mkdtemp(prefix="fabstir-bench-node-"))
    (root / "models").mkdir()
    (root / "models" / model.name).symlink_to(model.resolve())
    port = free_port()
    config = root / "node.toml"
    config.write_text(
        node_toml(
            root,
            model,
            port=port,
            threads=threads,
            slots=slots,
            ctx=ctx,
            batch=batch,
            api=dict(api or {}),
            flash_attention=flash_attention,
        )
    )
    key = "bench-" + secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABSTIR_")}
    env["FABSTIR_API_KEY"] = key
    log = root / ("tui.out" if tui else "node.log")
    try:
        process, counter, terminal = _spawn(root, config, env, tui=tui, log=log)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    proc = NodeProc(
        url=f"http://127.0.0.1:{port}",
        api_key=key,
        pid=process.pid,
        log_path=log,
        tui=tui,
        process=process,
        drained_bytes=counter,
    )
    try:
        await _wait_ready(proc, READY_TIMEOUT_S)
        if tui:
            async with asyncio.timeout(15):
                while not _screen_seen(log):
                    if process.poll() is not None:
                        raise NodeStartError("the TUI exited:\n" + proc.log_tail())
                    await asyncio.sleep(0.2)
        yield proc
    finally:
        await asyncio.to_thread(stop_process_group, process)
        if terminal is not None:
            master, drainer = terminal
            await asyncio.to_thread(drainer.join, 5)
            with contextlib.suppress(OSError):
                os.close(master)
        if os.environ.get("FABSTIR_BENCH_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
