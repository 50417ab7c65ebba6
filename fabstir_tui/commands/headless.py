"""`fabstir-tui --headless` and `demo --headless`: the same engine, logs on stderr, no screen."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, fail
from fabstir_tui.engine.events import (
    LogRecorded,
    ModelLoadProgress,
    OperatorActionRecorded,
)
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.node import Node

_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3}
DEMO_PROMPT = "In two sentences, what does a GPU do when it runs a language model?"


def _stamp(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


async def _print_events(node: Node) -> None:
    floor = _RANK[node.config.node.log_level]
    sub = node.bus.subscribe(LogRecorded, OperatorActionRecorded, ModelLoadProgress)
    async for ev in sub:
        if isinstance(ev, LogRecorded) and _RANK[ev.level] >= floor:
            line = f"{_stamp(ev.ts)} {ev.level.upper():<7} {ev.source}: {ev.message}"
        elif isinstance(ev, OperatorActionRecorded):
            line = f"{_stamp(ev.ts)} AUDIT   {ev.action} {ev.detail}: {ev.outcome}"
        elif isinstance(ev, ModelLoadProgress) and floor <= _RANK["info"]:
            line = f"{_stamp(ev.ts)} INFO    loading {Path(ev.path).name}: {ev.stage}"
        else:
            continue
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


async def _demo_prompt(node: Node, model_path: str, prompt: str, max_tokens: int) -> None:
    stream = node.generate(
        model_path,
        GenerationRequest(messages=({"role": "user", "content": prompt},), max_tokens=max_tokens),
    )
    sys.stdout.write(f"> {prompt}\n")
    async for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    st = stream.stats
    sys.stdout.write("\n")
    node.log(
        "info",
        "demo",
        f"{st.completion_tokens} tokens, first token "
        f"{(st.ttft_s or 0) * 1000:.0f} ms, {st.tokens_per_s or 0:.1f} tok/s",
    )


async def run_headless(
    node: Node, demo_model: Path | None = None, once: bool = False, max_tokens: int = 64
) -> int:
    """Run until SIGTERM/SIGINT/SIGHUP, then stop cleanly (nothing is lost: see DESIGN §11.14)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    printer = asyncio.create_task(_print_events(node))
    code = EXIT_OK
    try:
        await node.start()
        if demo_model is not None:
            model = await node.load_model(demo_model)
            await _demo_prompt(node, model.path, DEMO_PROMPT, max_tokens)
        if not once:
            node.log("info", "node", "running headless; SIGTERM or Ctrl-C stops the node")
            await stop.wait()
            node.log("info", "node", "signal received: stopping")
    except InferenceError as exc:
        code = fail(str(exc), EXIT_FAILED)
    finally:
        await node.stop()
        await asyncio.sleep(0.05)  # let the printer flush the last lines
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
    return code
