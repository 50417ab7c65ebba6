"""`fabstir-tui --headless` and `demo --headless`: the same engine, logs on stderr, no screen."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail
from fabstir_tui.engine.events import (
    LogRecorded,
    ModelLoadProgress,
    OperatorActionRecorded,
)
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.store import StoreError

_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3}
EXIT_INTERRUPTED = 130
DEMO_PROMPT = "In two sentences, what does a GPU do when it runs a language model?"
AfterStart = Callable[[Node], Awaitable[None]]
BeforeStop = Callable[[Node], Awaitable[None]]


def _stamp(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


async def _print_events(node: Node) -> None:
    floor = _RANK[node.config.node.log_level]
    sub = node.bus.subscribe(LogRecorded, OperatorActionRecorded, ModelLoadProgress)
    shown: tuple[str, int] = ("", -1)  # a load's stage and quarter last printed
    async for ev in sub:
        if isinstance(ev, LogRecorded) and _RANK[ev.level] >= floor:
            line = f"{_stamp(ev.ts)} {ev.level.upper():<7} {ev.source}: {ev.message}"
        elif isinstance(ev, OperatorActionRecorded):
            line = f"{_stamp(ev.ts)} AUDIT   {ev.action} {ev.detail}: {ev.outcome}"
        elif isinstance(ev, ModelLoadProgress) and floor <= _RANK["info"]:
            step = (ev.stage, int(ev.fraction * 4))
            if step == shown:
                continue  # a line per stage and per quarter, not per tensor
            shown = step
            line = (
                f"{_stamp(ev.ts)} INFO    loading {Path(ev.path).name}: {ev.stage} "
                f"({ev.fraction:.0%})"
            )
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


async def _bring_up(
    node: Node, demo_model: Path | None, max_tokens: int, after_start: AfterStart | None
) -> None:
    await node.start()
    if after_start is not None:  # the demo unlocks its key here
        await after_start(node)
    if demo_model is not None:
        model = await node.load_model(demo_model)
        await _demo_prompt(node, model.path, DEMO_PROMPT, max_tokens)


async def run_headless(
    node: Node,
    demo_model: Path | None = None,
    once: bool = False,
    max_tokens: int = 64,
    after_start: AfterStart | None = None,
    before_stop: BeforeStop | None = None,
    duration_s: float | None = None,
) -> int:
    """Run until SIGTERM/SIGINT/SIGHUP (or `duration_s` seconds), then stop: workers exit,
    the store closes cleanly.

    A signal during start-up, a model load or the demo prompt interrupts it at once.
    `after_start` runs once the node has started (the demo unlocks its devnet key there);
    `before_stop` runs before the node stops, even after a failure (the demo stops its
    simulated clients and prints its summary there).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    expired = asyncio.Event()

    def time_up() -> None:
        expired.set()
        stop.set()

    timer = loop.call_later(duration_s, time_up) if duration_s is not None else None
    printer = asyncio.create_task(_print_events(node))
    code = EXIT_OK
    try:
        work = asyncio.create_task(_bring_up(node, demo_model, max_tokens, after_start))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            why = f"{duration_s:g} s are up" if expired.is_set() else "signal received"
            node.log("info", "node", f"{why} during start-up: stopping")
            code = EXIT_INTERRUPTED
        else:
            work.result()  # raises what start-up raised
            if not once:
                node.log("info", "node", "running headless; SIGTERM or Ctrl-C stops the node")
                await stopper
                why = f"{duration_s:g} s are up" if expired.is_set() else "signal received"
                node.log("info", "node", f"{why}: stopping")
        stopper.cancel()
    except InferenceError as exc:
        code = fail(str(exc), EXIT_FAILED)
    except (StoreError, OSError) as exc:
        code = fail(str(exc), EXIT_USAGE)
    finally:
        if timer is not None:
            timer.cancel()
        if before_stop is not None:
            try:
                await before_stop(node)
            except Exception as exc:  # the node must still stop cleanly
                node.log("error", "node", f"before stopping: {exc!r}")
        await node.stop()
        await asyncio.sleep(0)
        node.bus.close()  # ends the printer's subscription once it has drained
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(printer, 5)
    return code
