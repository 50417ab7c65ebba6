"""What the stream bench measures ours against: llama-cpp-python called directly in the bench's
process, and two servers, each a subprocess on a free loopback port in its own process group,
stopped by that group (SIGTERM, then SIGKILL):

- `python -m llama_cpp.server`: llama-cpp-python's own OpenAI server, the same wheel as ours;
- llama.cpp's `llama-server`, built once by scripts/build-llama-server.sh with our CPU flags.

Both load the model with the settings our worker uses (context, batch, threads; all on the
CPU). A server that cannot start raises BaselineUnavailable with the reason and its log tail,
so the bench can skip it and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from node_proc import free_port, log_tail, stop_process_group
from openai_stream import SEED, StreamResult

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0
BUILD_COMMAND = "scripts/build-llama-server.sh"
# Our sampler's defaults, sent to the baselines too (llama_cpp.server's repeat penalty is 1.1).
SAMPLER = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}


class BaselineUnavailable(RuntimeError):
    """A baseline server could not start; the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class BaselineProc:
    """A running baseline server: its name, where it answers, its pid and its output."""

    name: str
    url: str
    pid: int
    log_path: Path


def llama_cpp_version() -> str:
    """The llama-cpp-python version pinned in pyproject.toml (the llama-server build's too)."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"llama-cpp-python==([0-9.]+)"', text)
    if found is None:
        raise BaselineUnavailable("pyproject.toml pins no llama-cpp-python version")
    return found.group(1)


def llama_server_path() -> Path | None:
    """Where scripts/build-llama-server.sh caches the binary, if it is built (never builds)."""
    cache = os.environ.get("FABSTIR_LLAMA_SERVER_CACHE")
    if cache:
        folder = Path(cache)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "fabstir-tui" / "llama-server" / f"{llama_cpp_version()}-cpu"
    binary = folder / "llama-server"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


async def _wait_ready(
    process: subprocess.Popen[bytes], name: str, url: str, log: Path, path: str
) -> None:
    """Until GET `path` answers 200 (the model is loaded), or BaselineUnavailable."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise BaselineUnavailable(f"{name} exited with {code}; its log:\n{log_tail(log)}")
            try:
                async with session.get(url + path) as response:
                    if response.status == 200:
                        return
                    last = f"{response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
    raise BaselineUnavailable(
        f"{name} did not answer {path} within {READY_TIMEOUT_S:.0f} s (last: {last}); "
        f"its log:\n{log_tail(log)}"
    )


@contextlib.asynccontextmanager
async def _server(
    name: str, command: list[str], port: int, ready_path: str
) -> AsyncIterator[BaselineProc]:
    """Run `command` in its own process group until the block ends, whatever ends it."""
    folder = Path(tempfile.mkdtemp(prefix="fabstir-bench-baseline-"))
    log = folder / f"{name}.log"
    try:
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=folder,
                start_new_session=True,
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(process, name, url, log, ready_path)
        yield BaselineProc(name=name, url=url, pid=process.pid, log_path=log)
    finally:
        await asyncio.to_thread(stop_process_group, process)
        if os.environ.get("FABSTIR_BENCH_KEEP") != "1":
            shutil.rmtree(folder, ignore_errors=True)


def llama_cpp_server(
    model: Path, *, threads: int, ctx: int, batch: int, flash_attn: bool
) -> contextlib.AbstractAsyncContextManager[BaselineProc]:
    """`python -m llama_cpp.server` with our worker's load settings; ready on GET /v1/models."""
    try:
        import fastapi  # noqa: F401  (the server extra; the wheel is installed without it)
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise BaselineUnavailable(
            f"llama_cpp.server needs its server extra ({exc.name} is missing): "
            ".venv/bin/pip install -e '.[dev]'"
        ) from exc
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(ctx),
        "--n_batch",
        str(batch),
        "--n_gpu_layers",
        "0",
        "--flash_attn",
        "true" if flash_attn else "false",
        "--verbose",
        "false",
        # By default a new request interrupts the stream in progress; queue them instead.
        "--interrupt_requests",
        "false",
        # Its default keeps every prompt token's logits (ours and the others keep the last).
        "--logits_all",
        "false",
    ]
    return _server("llama_cpp.server", command, port, "/v1/models")


def llama_server(
    model: Path,
    *,
    threads: int,
    parallel: int,
    ctx_per_stream: int,
    batch: int,
    flash_attn: bool,
) -> contextlib.AbstractAsyncContextManager[BaselineProc]:
    """llama.cpp's llama-server with `parallel` slots of `ctx_per_stream` each; ready on
    GET /health (503 while it loads)."""
    binary = llama_server_path()
    if binary is None:
        raise BaselineUnavailable(
            "llama-server is not built; build it once (about 15 minutes on 2 cores) with: "
            f"{BUILD_COMMAND}"
        )
    port = free_port()
    command = [
        str(binary),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--parallel",
        str(parallel),
        "-c",
        str(parallel * ctx_per_stream),
        "-b",
        str(batch),
        "-ngl",
        "0",
        "-fa",
        "on" if flash_attn else "off",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return _server("llama-server", command, port, "/health")


def direct_stream(llm: Any, prompt: str, max_tokens: int) -> StreamResult:
    """llama-cpp-python's own streaming completion in this process; tokens are its chunks."""
    started = time.perf_counter()
    ttft: float | None = None
    pieces: list[str] = []
    finish: str | None = None
    for chunk in llm.create_completion(
        prompt, max_tokens=max_tokens, temperature=0.0, seed=SEED, stream=True, **SAMPLER
    ):
        choice = chunk["choices"][0]
        finish = choice.get("finish_reason") or finish
        if choice["text"]:
            ttft = ttft if ttft is not None else time.perf_counter() - started
            pieces.append(choice["text"])
    wall = time.perf_counter() - started
    return StreamResult(
        ttft_s=ttft if ttft is not None else wall,
        wall_s=wall,
        completion_tokens=len(pieces),
        tokens_from="chunks",
        chunks=len(pieces),
        text="".join(pieces),
        finish_reason=finish,
    )


def load_direct(model: Path, *, threads: int, ctx: int, batch: int, flash_attn: bool) -> Any:
    """The model as our worker loads it (engine/inference/worker.py), all on the CPU."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model),
        n_ctx=ctx,
        n_batch=batch,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        flash_attn=flash_attn,
        seed=SEED,
        verbose=False,
    )
