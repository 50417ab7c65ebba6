"""Streamed completions through our HTTP API vs the same model served by others, on the CPU:

1. one stream: our node (a real `fabstir-tui --headless` subprocess) vs llama-cpp-python
   called directly in this process (`Llama.create_completion(stream=True)`, our worker's load
   settings) vs `python -m llama_cpp.server` (and llama.cpp's `llama-server` when built);
2. N concurrent streams (default 8): aggregate completion tokens/s (all tokens / wall of the
   round) and the p50 per-stream time to first token: our node with inference.slots = N
   (continuous batching, one sequence per slot, like llama-server's `--parallel N`) vs
   llama-server `--parallel N` vs llama_cpp.server (which serialises requests).
Case 1 runs our node with slots = 1 (the plain path); case 2 a second node with slots = N.

Every side gets the same model (SmolLM2 by default), threads, context, batch, prompts and
max_tokens, greedy with a fixed seed; one warm-up each; repetitions interleave the sides in a
rotating order so drift hits all of them; figures are medians. tokens/s is end to end as a
client sees it (completion tokens ÷ request wall time, prompt processing included).
Writes bench/results/api_stream.json and prints a markdown table.
Run: `.venv/bin/python bench/api_stream.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from baselines import (
    SAMPLER,
    BaselineProc,
    BaselineUnavailable,
    direct_stream,
    llama_cpp_server,
    llama_server,
    llama_server_path,
    load_direct,
)
from node_proc import NodeStartError, cancel_on_sigterm, running_node
from openai_stream import StreamResult, first_model_id, stream_completion

from fabstir_tui.engine.inference.demo_model import demo_model_path

ROOT = Path(__file__).resolve().parent.parent
TOPICS = (
    "a printing press in old Europe",
    "bees that dance to share where flowers are",
    "a Roman road builder",
    "a sailor who studies the tides",
    "a baker and her warm kitchen",
    "a lighthouse on a rocky coast",
    "the first train in a small town",
    "a secret map of the sea",
    "a glassblower and his sand",
    "an owl that hunts at night",
    "a telegraph operator",
    "a river that carves a canyon",
)
Runner = Callable[[str], Awaitable[StreamResult]]


def prompt_for(index: int) -> str:
    """A distinct prompt per run (the same list on every side), so no side replays a cached
    prompt: each first token includes a real prompt evaluation. SmolLM2 tells these stories
    past 128 tokens, so runs rarely end early (the token counts are in the JSON)."""
    topic = TOPICS[index % len(TOPICS)]
    return f"Story {index + 1}: a long tale about {topic}.\n\nOnce upon a time,"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise_single(runs: list[StreamResult]) -> dict[str, Any]:
    return {
        "tokens_per_s": median([r.tokens_per_s for r in runs]),
        "decode_tokens_per_s": median([r.decode_tokens_per_s for r in runs]),
        "ttft_ms": median([r.ttft_s * 1000 for r in runs]),
        # The least disturbed run: other processes on a shared machine only ever slow a run.
        "best_tokens_per_s": max(r.tokens_per_s for r in runs),
        "best_ttft_ms": min(r.ttft_s * 1000 for r in runs),
        "completion_tokens": [r.completion_tokens for r in runs],
        "tokens_from": sorted({r.tokens_from for r in runs}),
        "runs": [
            {"ttft_ms": r.ttft_s * 1000, "wall_ms": r.wall_s * 1000, "tokens": r.completion_tokens}
            for r in runs
        ],
    }


async def single_case(
    sides: dict[str, Runner], reps: int, texts: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """One stream at a time: a warm-up per side, then `reps` rounds in a rotating order."""
    names = list(sides)
    for name in names:
        await sides[name](prompt_for(1000))
    runs: dict[str, list[StreamResult]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            result = await sides[name](prompt_for(rep))
            runs[name].append(result)
            texts[name].append(result.text)
            print(
                f"  single {name:<20} rep {rep + 1}/{reps}: {result.completion_tokens} tokens, "
                f"{result.tokens_per_s:.1f} tok/s, ttft {result.ttft_s * 1000:.0f} ms",
                flush=True,
            )
    return {name: summarise_single(found) for name, found in runs.items()}


async def concurrent_round(run: Runner, streams: int, round_index: int) -> dict[str, Any]:
    """`streams` requests at once; aggregate tokens/s over the round's wall time."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(run(prompt_for(100 + round_index * streams + k)) for k in range(streams))
    )
    wall = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "aggregate_tokens_per_s": tokens / wall,
        "ttft_ms": sorted(r.ttft_s * 1000 for r in results),
        "stream_tokens": [r.completion_tokens for r in results],
        "tokens_from": sorted({r.tokens_from for r in results}),
    }


async def concurrent_case(
    sides: dict[str, Runner], streams: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """A warm-up round per side, then `rounds` rounds in a rotating order."""
    names = list(sides)
    for name in names:
        await concurrent_round(sides[name], streams, 999)
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            result = await concurrent_round(sides[name], streams, index)
            found[name].append(result)
            print(
                f"  {streams} streams {name:<17} round {index + 1}/{rounds}: "
                f"{result['tokens']} tokens in {result['wall_s']:.1f} s, "
                f"{result['aggregate_tokens_per_s']:.1f} tok/s",
                flush=True,
            )
    return {
        name: {
            "tokens_per_s": median([r["aggregate_tokens_per_s"] for r in rounds_found]),
            "ttft_ms": median([t for r in rounds_found for t in r["ttft_ms"]]),
            "rounds": rounds_found,
        }
        for name, rounds_found in found.items()
    }


def http_runner(
    session: aiohttp.ClientSession,
    url: str,
    max_tokens: int,
    *,
    api_key: str | None = None,
    model: str | None = None,
    baseline: bool = False,
) -> Runner:
    async def run(prompt: str) -> StreamResult:
        return await stream_completion(
            session,
            url,
            prompt=prompt,
            max_tokens=max_tokens,
            api_key=api_key,
            model=model,
            extra=SAMPLER if baseline else None,
        )

    return run


def llama_server_version(binary: Path | None) -> str | None:
    if binary is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else None
    return None


async def start_baseline(
    stack: contextlib.AsyncExitStack,
    skipped: dict[str, str],
    name: str,
    factory: Callable[[], contextlib.AbstractAsyncContextManager[BaselineProc]],
) -> BaselineProc | None:
    """Start a baseline for the rest of the bench, or note why it is skipped."""
    try:
        proc = await stack.enter_async_context(factory())
    except BaselineUnavailable as exc:
        skipped[name] = str(exc)
        print(f"SKIPPED {name}: {exc}", file=sys.stderr, flush=True)
        return None
    print(f"{name}: pid {proc.pid} at {proc.url}", flush=True)
    return proc


def ratios(figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ours ÷ each other side, for tokens/s and for ttft."""
    ours = figures["ours"]
    return {
        name: {
            "tokens_per_s": ours["tokens_per_s"] / fig["tokens_per_s"],
            "ttft": ours["ttft_ms"] / fig["ttft_ms"],
        }
        for name, fig in figures.items()
        if name != "ours"
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_sigterm()
    load_before = os.getloadavg()
    fa = args.flash_attention == "on"
    skipped: dict[str, str] = {}
    binary = None if args.no_llama_server else llama_server_path()
    if args.no_llama_server:
        skipped["llama-server"] = "--no-llama-server"
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        contextlib.AsyncExitStack() as stack,
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
    ):
        api = {"requests_per_minute": 100_000}
        node = await stack.enter_async_context(
            running_node(
                args.model,
                threads=args.threads,
                slots=1,
                ctx=args.ctx,
                batch=args.batch,
                api=api,
                flash_attention=fa,
            )
        )
        print(f"ours (slots 1): pid {node.pid} at {node.url}", flush=True)
        batched = await stack.enter_async_context(
            running_node(
                args.model,
                threads=args.threads,
                slots=args.streams,
                ctx=args.ctx,
                batch=max(args.batch, args.streams),
                api=api,
                flash_attention=fa,
            )
        )
        print(f"ours (slots {args.streams}): pid {batched.pid} at {batched.url}", flush=True)
        server = await start_baseline(
            stack,
            skipped,
            "llama_cpp.server",
            lambda: llama_cpp_server(
                args.model, threads=args.threads, ctx=args.ctx, batch=args.batch, flash_attn=fa
            ),
        )
        parallel = None
        if not args.no_llama_server:
            parallel = await start_baseline(
                stack,
                skipped,
                "llama-server",
                lambda: llama_server(
                    args.model,
                    threads=args.threads,
                    parallel=args.streams,
                    ctx_per_stream=args.ctx,
                    batch=args.batch,
                    flash_attn=fa,
                ),
            )
        llm = await asyncio.to_thread(
            load_direct,
            args.model,
            threads=args.threads,
            ctx=args.ctx,
            batch=args.batch,
            flash_attn=fa,
        )
        model_id = await first_model_id(session, node.url, node.api_key)
        ours = http_runner(session, node.url, args.max_tokens, api_key=node.api_key, model=model_id)
        ours_batched = http_runner(
            session, batched.url, args.max_tokens, api_key=batched.api_key, model=model_id
        )

        async def direct(prompt: str) -> StreamResult:
            return await asyncio.to_thread(direct_stream, llm, prompt, args.max_tokens)

        single: dict[str, Runner] = {"ours": ours, "llama-cpp-python direct": direct}
        many: dict[str, Runner] = {"ours": ours_batched}
        if server is not None:
            runner = http_runner(session, server.url, args.max_tokens, baseline=True)
            single["llama_cpp.server"] = many["llama_cpp.server"] = runner
        if parallel is not None:
            runner = http_runner(session, parallel.url, args.max_tokens, baseline=True)
            single["llama-server"] = runner
            many[f"llama-server --parallel {args.streams}"] = runner
        texts: dict[str, list[str]] = {name: [] for name in single}
        print(f"case 1: one stream, {args.reps} reps, max_tokens {args.max_tokens}", flush=True)
        one = await single_case(single, args.reps, texts)
        print(f"case 2: {args.streams} concurrent streams, {args.rounds} rounds", flush=True)
        concurrent = await concurrent_case(many, args.streams, args.rounds)
    same_text = {name: found == texts["ours"] for name, found in texts.items() if name != "ours"}
    import llama_cpp

    return {
        "model": str(args.model),
        "threads": args.threads,
        "ctx_per_stream": args.ctx,
        "n_batch": args.batch,
        "flash_attention": args.flash_attention,
        "max_tokens": args.max_tokens,
        "reps": args.reps,
        "streams": args.streams,
        "rounds": args.rounds,
        "quick": args.quick,
        "tokens_per_s_is": "completion tokens / request wall time (prompt processing included)",
        "tokens_counted_from": "usage (ours), timings or usage (llama-server), stream chunks "
        "(direct, and llama_cpp.server: it sends no usage when streaming)",
        "our_concurrency": "case 1: inference.slots = 1; case 2: inference.slots = streams "
        "(continuous batching, a sequence of ctx_per_stream cells per slot)",
        "single": one,
        "single_ratios_ours_over": ratios(one),
        "concurrent": concurrent,
        "concurrent_ratios_ours_over": ratios(concurrent),
        "same_greedy_text_as_ours": same_text,
        "skipped": skipped,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "llama_cpp_python": str(llama_cpp.__version__),
        "llama_server": llama_server_version(binary),
    }


def table(result: dict[str, Any]) -> str:
    """The markdown table for the README: ratio = ours ÷ that row, on tokens/s."""
    lines = [
        f"| case ({Path(result['model']).name}, {result['threads']} threads, "
        f"max_tokens {result['max_tokens']}, flash attention {result['flash_attention']}) "
        "| tokens/s | ttft ms | ratio vs ours (ours ÷ this) |",
        "|---|---|---|---|",
    ]
    for key, label in (("single", "1 stream"), ("concurrent", f"{result['streams']} streams")):
        ratio = result[f"{key}_ratios_ours_over"]
        for name, fig in result[key].items():
            shown = "1.00" if name == "ours" else f"{ratio[name]['tokens_per_s']:.2f}"
            ttft = "p50 " if key == "concurrent" else ""
            shown_name = name
            if key == "concurrent" and name == "ours":
                shown_name = f"ours (slots {result['streams']}, batched)"
            lines.append(
                f"| {label}: {shown_name} | {fig['tokens_per_s']:.1f} | {ttft}{fig['ttft_ms']:.0f} "
                f"| {shown} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=demo_model_path())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context per stream")
    parser.add_argument("--batch", type=int, default=512, help="n_batch (our default)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5, help="single-stream repetitions")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="concurrent rounds")
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument(
        "--flash-attention",
        choices=("on", "off"),
        default="on",
        help="for every side (our default: on)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_stream.json")
    args = parser.parse_args()
    if args.quick:
        args.max_tokens, args.reps, args.rounds = min(args.max_tokens, 24), 1, 1
    try:
        result = asyncio.run(measure(args))
    except NodeStartError as exc:
        print(f"our node did not start: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every subprocess was stopped", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why.splitlines()[0]}")
    print(f"same greedy text as ours: {result['same_greedy_text_as_ours']}")
    print(f"load average before/after: {result['load_average_before']} / ", end="")
    print(f"{result['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
