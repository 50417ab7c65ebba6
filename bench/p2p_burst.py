"""A burst of brand-new peers against one node (issue 4 item 4): do all of them get answered?

The target is the real `P2PService` (with a fixed info answer) on 127.0.0.1. Up to
`processes` child processes (`--child` mode of this file) each start newcomers/processes hosts
with fresh ed25519 identities, report ready, and on one shared start time all dial at once;
each then asks `/fabstir/info/1.0.0` and counts a success when the answer arrives within 30 s
of its dial. `--raw` runs the same target without our admission control (the library's
defaults plus our other workarounds), so the improvement is measured in the same run.
Run: `.venv/bin/python bench/p2p_burst.py [--newcomers 150] [--processes 4] [--raw]`;
writes bench/results/p2p_burst.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the package importable
    sys.path.insert(0, str(ROOT))

ANSWER_LIMIT_S = 30.0
START_DELAY_S = 0.5  # from the parent's go signal to the shared dial time
READY_TIMEOUT_S = 120.0
_LOCAL = "/ip4/127.0.0.1/tcp/0"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# --- child: the newcomers ------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    """A failure reason that groups well: type and first line, with the underlying cause
    (the library wraps negotiation timeouts), peer ids and addresses left out."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        text = str(seen).splitlines()[0] if str(seen) else ""
        text = re.sub(r"/ip4/\S+|12D3Koo\w+|Qm\w{44}", "<peer>", text)
        parts.append(f"{type(seen).__name__}: {text}"[:100])
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def _quiet_libp2p() -> None:
    """The library logs every failed stream at ERROR with a paragraph; the bench groups the
    reasons itself. Importing libp2p resets its logger level, so import it first."""
    import libp2p  # noqa: F401

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)


async def _newcomer(
    target: str, ready: Any, start_at: list[float], out: list[dict[str, Any]]
) -> None:
    """One fresh-identity host: start, wait for the shared start time, dial, ask, record."""
    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from fabstir_tui.engine.p2p.host import HostConfig, running_host
    from fabstir_tui.engine.p2p.messages import INFO_PROTOCOL, InfoRequest, parse_info
    from fabstir_tui.engine.p2p.streams import close_quietly, frame_reader, write_frame

    config = HostConfig(Path("/nonexistent/unused-identity"), (_LOCAL,))
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    record: dict[str, Any] = {"ok": False}
    try:
        async with running_host(config, create_new_key_pair()) as host:
            ready.release()
            while not start_at:
                await trio.sleep(0.01)
            await trio.sleep(max(0.0, start_at[0] - time.time()))
            record["dial_at"] = time.time()
            began = time.perf_counter()
            try:
                with trio.fail_after(ANSWER_LIMIT_S):
                    await host.connect(info)
                    record["connected_s"] = time.perf_counter() - began
                    stream = await host.new_stream(info.peer_id, [TProtocol(INFO_PROTOCOL)])
                    try:
                        await write_frame(stream, InfoRequest().to_frame())
                        frame = await frame_reader(stream).read_frame()
                    finally:
                        with trio.CancelScope(shield=True):
                            await close_quietly(stream)
                    if frame is None:
                        raise EOFError("stream closed without an answer")
                    parse_info(frame)
                record["ok"] = True
                record["answer_s"] = time.perf_counter() - began
            except trio.TooSlowError:
                record["reason"] = f"no answer within {ANSWER_LIMIT_S:g} s"
            except Exception as exc:
                record["reason"] = _short(exc)
    except Exception as exc:  # the host itself failed (start or close)
        if "reason" not in record and not record["ok"]:
            record["reason"] = "host: " + _short(exc)
    out.append(record)


async def _child_main(target: str, count: int) -> list[dict[str, Any]]:
    import trio

    out: list[dict[str, Any]] = []
    start_at: list[float] = []
    ready = trio.Semaphore(0)
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(_newcomer, target, ready, start_at, out)
        for _ in range(count):
            await ready.acquire()
        print("READY", flush=True)
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        start_at.append(float(line))
    return out


def child(target: str, count: int) -> None:
    """`--child`: run `count` newcomers, print READY, read the start time, print results."""
    import trio

    _quiet_libp2p()
    results = trio.run(_child_main, target, count)
    print("RESULTS " + json.dumps(results), flush=True)


# --- parent: the target and the orchestration ----------------------------------------------


def _fixed_info() -> Any:
    from fabstir_tui.engine.p2p.messages import Capacity, InfoResponse, ModelOffer

    offer = ModelOffer(id="ab" * 32, name="bench-model", price_per_million=1000, price_token="")
    return InfoResponse(
        models=(offer,),
        capacity=Capacity(max_jobs=1, active_jobs=0),
        api_url="http://127.0.0.1:8080",
        chain_address="",
        version="bench",
    )


def _without_admission(host_config: Any, *args: Any, **kwargs: Any) -> Any:
    """HostConfig as the service asks for it, but with admission control off whatever it
    passes (the `--raw` baseline)."""
    return host_config(*args, **{**kwargs, "max_handshakes": None})


async def _spawn_children(target: str, counts: list[int]) -> list[asyncio.subprocess.Process]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = str(Path(__file__).resolve())
    return [
        await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            "--child",
            "--target",
            target,
            "--count",
            str(n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for n in counts
    ]


async def _read_line_starting(proc: asyncio.subprocess.Process, prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"a child exited (rc {await proc.wait()}) before {prefix}")
        line = raw.decode().strip()
        if line.startswith(prefix):
            return line[len(prefix) :].strip()


async def _burst(newcomers: int, processes: int, raw: bool) -> dict[str, Any]:
    from fabstir_tui.config import Config, P2pSection, PathsSection
    from fabstir_tui.engine.p2p import service as service_module
    from fabstir_tui.engine.p2p.admission import admission_of
    from fabstir_tui.engine.p2p.host import HostConfig
    from fabstir_tui.engine.p2p.service import P2PService

    processes = max(1, min(processes, newcomers))
    counts = [
        newcomers // processes + (1 if i < newcomers % processes else 0) for i in range(processes)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            paths=PathsSection(data_dir=Path(tmp) / "data", cache_dir=Path(tmp) / "cache"),
            p2p=P2pSection(enabled=True, listen_addrs=[_LOCAL]),
        )
        target_service = P2PService(config, _fixed_info)
        with contextlib.ExitStack() as raw_patch:
            if raw:  # P2PService builds its HostConfig inside start(): build it without admission
                without = functools.partial(_without_admission, HostConfig)
                raw_patch.enter_context(mock.patch.object(service_module, "HostConfig", without))
            await target_service.start()
        children: list[asyncio.subprocess.Process] = []
        try:
            target = target_service.listen_addrs()[0]
            children = await _spawn_children(target, counts)
            async with asyncio.timeout(READY_TIMEOUT_S):
                await asyncio.gather(*(_read_line_starting(c, "READY") for c in children))
            start_at = time.time() + START_DELAY_S
            for c in children:
                assert c.stdin is not None
                c.stdin.write(f"{start_at}\n".encode())
                await c.stdin.drain()
            async with asyncio.timeout(ANSWER_LIMIT_S + 60):
                outputs = await asyncio.gather(
                    *(_read_line_starting(c, "RESULTS") for c in children)
                )
            wall_s = time.time() - start_at
            for c in children:
                await c.wait()
            admission = admission_of(target_service.host)
            stats = dataclasses.asdict(admission.stats) if admission is not None else None
        finally:
            for c in children:
                if c.returncode is None:
                    c.kill()
                    await c.wait()
            await target_service.stop()
    records = [r for out in outputs for r in json.loads(out)]
    summary = _summary(records, newcomers, processes, raw, wall_s)
    summary["target_admission"] = stats
    return summary


def _summary(
    records: list[dict[str, Any]], newcomers: int, processes: int, raw: bool, wall_s: float
) -> dict[str, Any]:
    answers = [r["answer_s"] for r in records if r["ok"]]
    dials = [r["dial_at"] for r in records if "dial_at" in r]
    connects = [r["connected_s"] for r in records if "connected_s" in r]
    reasons = collections.Counter(r.get("reason", "?") for r in records if not r["ok"])
    missing = newcomers - len(records)
    if missing:
        reasons["no result from its child"] += missing
    return {
        "admission": not raw,
        "newcomers": newcomers,
        "processes": processes,
        "successes": len(answers),
        "failures": newcomers - len(answers),
        "reasons": dict(reasons.most_common()),
        "dial_spread_s": round(max(dials) - min(dials), 3) if dials else None,
        "wall_s": round(wall_s, 2),
        "answer_p50_s": round(statistics.median(answers), 3) if answers else None,
        "answer_p95_s": round(pct(answers, 0.95), 3) if answers else None,
        "answer_max_s": round(max(answers), 3) if answers else None,
        "connect_p50_s": round(statistics.median(connects), 3) if connects else None,
        "connect_max_s": round(max(connects), 3) if connects else None,
        "load_before": round(os.getloadavg()[0], 2),
    }


def run_burst(newcomers: int = 150, processes: int = 4, *, raw: bool = False) -> dict[str, Any]:
    """Run one burst against a fresh target and return its figures (see `_summary`)."""
    _quiet_libp2p()
    load = os.getloadavg()[0]
    result = asyncio.run(_burst(newcomers, processes, raw))
    result["load_before"] = round(load, 2)
    return result


def _table(results: list[dict[str, Any]]) -> str:
    head = f"{'target':<12}{'ok':>9}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'wall s':>8}{'spread':>8}"
    lines = [head]
    for r in results:
        name = "admission" if r["admission"] else "raw"
        ok = f"{r['successes']}/{r['newcomers']}"
        nums = [
            r["answer_p50_s"],
            r["answer_p95_s"],
            r["answer_max_s"],
            r["wall_s"],
            r["dial_spread_s"],
        ]
        cells = "".join(f"{'-' if v is None else f'{v:.2f}':>8}" for v in nums)
        lines.append(f"{name:<12}{ok:>9}{cells}")
        for reason, n in r["reasons"].items():
            lines.append(f"    {n:>4} x {reason}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--newcomers", type=int, default=150)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--raw", action="store_true", help="also run without admission control")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/p2p_burst.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.target, args.count)
        return 0
    results = []
    if args.raw:
        results.append(run_burst(args.newcomers, args.processes, raw=True))
    results.append(run_burst(args.newcomers, args.processes))
    print(_table(results))
    loads = [r["load_before"] for r in results]
    print(f"1-min load average before each run: {loads} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
