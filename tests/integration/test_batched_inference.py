"""Continuous batching (inference.slots > 1) on real llama.cpp: a worker process driven over its
own frame protocol, so the order of its events shows what ran together."""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabstir_tui.config import Config, InferenceSection, PathsSection, TelemetrySection
from fabstir_tui.engine.inference.request_text import EMPTY_PROMPT
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.inference.wire import encode_frame, read_frame_sync
from fabstir_tui.engine.node import Node

Frame = dict[str, Any]
LIMIT_S = 120.0  # a safety net against a hung worker, never a speed claim


class WorkerClient:
    """The engine's half of the worker protocol, synchronous and recording every event."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fabstir_tui.engine.inference.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.seen: list[Frame] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while (frame := read_frame_sync(self.proc.stdout)) is not None:
            if frame.get("ev") not in ("log", "progress"):
                self.frames.put(frame)
        self.frames.put(None)

    def send(self, *messages: Frame) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(encode_frame(m) for m in messages))
        self.proc.stdin.flush()

    def load(self, path: Path, n_ctx: int, slots: int) -> Frame:
        self.send(
            {
                "op": "load",
                "path": str(path),
                "n_ctx": n_ctx,
                "n_batch": 512,
                "n_threads": 1,
                "n_gpu_layers": 0,
                "main_gpu": 0,
                "seed": -1,
                "slots": slots,
            }
        )
        [loaded] = self.until(lambda f: f["ev"] in ("loaded", "load_failed"))[-1:]
        assert loaded["ev"] == "loaded", loaded
        return loaded

    def until(self, done: Callable[[Frame], bool]) -> list[Frame]:
        """Events (also kept in `seen`) up to and including the first that satisfies `done`."""
        got: list[Frame] = []
        while True:
            frame = self.frames.get(timeout=LIMIT_S)
            assert frame is not None, "the worker exited"
            got.append(frame)
            self.seen.append(frame)
            if done(frame):
                return got

    def until_finished(self, rids: set[str]) -> dict[str, Frame]:
        """Wait for every request's last event ("done" or "failed"); returns them by id."""
        ends: dict[str, Frame] = {}

        def last(frame: Frame) -> bool:
            if frame["ev"] in ("done", "failed") and frame.get("id") in rids:
                ends[frame["id"]] = frame
            return set(ends) == rids

        self.until(last)
        return ends

    def text(self, rid: str) -> str:
        return "".join(f["text"] for f in self.seen if f["ev"] == "tok" and f["id"] == rid)

    def close(self) -> None:
        try:
            self.send({"op": "shutdown"})
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers() -> Iterator[Callable[[], WorkerClient]]:
    started: list[WorkerClient] = []

    def start() -> WorkerClient:
        started.append(WorkerClient())
        return started[-1]

    yield start
    for client in started:
        client.close()


def greedy(rid: str, prompt: str, max_tokens: int) -> Frame:
    return {
        "op": "generate",
        "id": rid,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }


def solo(client: WorkerClient, rid: str, prompt: str, max_tokens: int) -> tuple[str, Frame]:
    client.send(greedy(rid, prompt, max_tokens))
    end = client.until_finished({rid})[rid]
    return client.text(rid), end


def test_one_request_alone_matches_the_unbatched_worker(
    workers: Callable[[], WorkerClient], tiny_gguf: Path
) -> None:
    """Same greedy text and token count: a lone sequence in a batched context is the same math
    (random weights make near-ties everywhere, so a numeric drift would show)."""
    plain, batched = workers(), workers()
    assert plain.load(tiny_gguf, n_ctx=256, slots=1)["n_ctx"] == 256
    # Each batched sequence keeps the configured context, not a quarter of it.
    assert batched.load(tiny_gguf, n_ctx=256, slots=4)["n_ctx"] == 256
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    text_1, end_1 = solo(plain, "a", prompt, 40)
    text_4, end_4 = solo(batched, "a", prompt, 40)
    assert end_1["ev"] == end_4["ev"] == "done"
    assert (end_4["prompt_tokens"], end_4["completion_tokens"], end_4["finish_reason"]) == (
        end_1["prompt_tokens"],
        end_1["completion_tokens"],
        end_1["finish_reason"],
    )
    assert end_1["completion_tokens"] > 0
    assert text_4 == text_1


PROMPTS = {
    "p8": ("The capital of France is", 8),
    "p12": ("Write a short poem about the sea:\n", 12),
    "p16": ("def fibonacci(n):\n", 16),
    "p20": ("Once upon a time, in a small village,", 20),
}


@pytest.mark.slow
def test_concurrent_greedy_requests_run_together(
    workers: Callable[[], WorkerClient], smollm_gguf: Path
) -> None:
    client = workers()
    client.load(smollm_gguf, n_ctx=512, slots=4)
    alone = {rid: solo(client, f"solo-{rid}", p, n)[0] for rid, (p, n) in PROMPTS.items()}
    client.send(*(greedy(rid, p, n) for rid, (p, n) in PROMPTS.items()))
    ends = client.until_finished(set(PROMPTS))
    for rid, (_, max_tokens) in PROMPTS.items():
        assert ends[rid]["ev"] == "done", ends[rid]
        # SmolLM2 does not end these prompts early; a "stop" would still have to be short.
        assert ends[rid]["finish_reason"] == "length", ends[rid]
        assert ends[rid]["completion_tokens"] == max_tokens
    batch = [f for f in client.seen if f.get("id") in PROMPTS]
    first_done = next(i for i, f in enumerate(batch) if f["ev"] == "done")
    # Batching, shown by order: every request streamed before any of them finished.
    assert {f["id"] for f in batch[:first_done] if f["ev"] == "tok"} == set(PROMPTS)
    # Greedy batched text equals the same request run alone (held on every CPU run so far).
    assert {rid: client.text(rid) for rid in PROMPTS} == alone


@pytest.mark.slow
def test_cancel_one_sequence_and_a_late_joiner_is_served(
    workers: Callable[[], WorkerClient], smollm_gguf: Path
) -> None:
    client = workers()
    client.load(smollm_gguf, n_ctx=512, slots=4)
    client.send(greedy("long", "Once upon a time there was a dragon who", 200))
    client.send(greedy("steady", "List the planets of the solar system:", 48))
    tokens = 0

    def third_token_of_long(frame: Frame) -> bool:
        nonlocal tokens
        tokens += frame["ev"] == "tok" and frame["id"] == "long"
        return tokens >= 3

    client.until(third_token_of_long)
    client.send({"op": "cancel", "id": "long"})
    client.send(greedy("late", "The best way to learn a language is", 10))
    ends = client.until_finished({"long", "steady", "late"})
    assert ends["long"]["finish_reason"] == "cancelled"
    assert 3 <= ends["long"]["completion_tokens"] < 200
    assert (ends["steady"]["finish_reason"], ends["steady"]["completion_tokens"]) == ("length", 48)
    assert (ends["late"]["finish_reason"], ends["late"]["completion_tokens"]) == ("length", 10)
    order = [(f["ev"], f.get("id")) for f in client.seen]
    # Continuous batching: the late request joined while "steady" was still decoding.
    assert order.index(("tok", "late")) < order.index(("done", "steady"))
    assert order.index(("tok", "steady")) < order.index(("tok", "late"))


@pytest.mark.parametrize("slots", [1, 4])
def test_a_stop_string_split_over_tokens_is_never_sent(
    workers: Callable[[], WorkerClient], smollm_gguf: Path, slots: int
) -> None:
    client = workers()
    client.load(smollm_gguf, n_ctx=512, slots=slots)
    prompt = "Once upon a time, in a small village by the sea,"
    free, _ = solo(client, "free", prompt, 48)
    # A stop that starts inside a word's token and ends in the next one: the start of that
    # token's text could be the stop string, so none of it may go out before we know.
    word = re.search(r" ([A-Za-z]{4,})( \S)", free[10:])
    assert word is not None, free
    stop = word.group(1)[1:] + word.group(2)
    client.send({**greedy("cut", prompt, 48), "stop": [stop]})
    end = client.until_finished({"cut"})["cut"]
    assert end["finish_reason"] == "stop"
    assert client.text("cut") == free[: free.index(stop)]


def test_prompt_too_long_fails_alone(workers: Callable[[], WorkerClient], tiny_gguf: Path) -> None:
    client = workers()
    n_ctx = client.load(tiny_gguf, n_ctx=256, slots=4)["n_ctx"]
    assert n_ctx == 256  # llama.cpp rounds contexts up to 256 cells, batched or not
    client.send(
        greedy("ok-1", "hello world", 12),
        greedy("huge", "word " * 400, 12),
        greedy("ok-2", "good morning", 12),
    )
    ends = client.until_finished({"ok-1", "huge", "ok-2"})
    assert ends["huge"]["ev"] == "failed"
    assert f"but the context holds {n_ctx}" in ends["huge"]["reason"]
    assert "word word" not in ends["huge"]["reason"], "errors never quote the prompt"
    for rid in ("ok-1", "ok-2"):
        assert ends[rid]["ev"] == "done" and 0 < ends[rid]["completion_tokens"] <= 12
    # The failed request left no sequence behind: four more fit at once.
    client.send(*(greedy(f"next-{i}", "hello", 6) for i in range(4)))
    ends = client.until_finished({f"next-{i}" for i in range(4)})
    assert all(end["ev"] == "done" for end in ends.values())


@pytest.mark.parametrize("slots", [1, 4])
def test_an_empty_prompt_is_refused_and_the_worker_serves_on(
    workers: Callable[[], WorkerClient], smollm_gguf: Path, slots: int
) -> None:
    # SmolLM2 adds no BOS, so "" has no tokens: batched, it once left a sequence with
    # nothing to decode and the owner thread spinning forever.
    client = workers()
    client.load(smollm_gguf, n_ctx=256, slots=slots)
    client.send(greedy("empty", "", 4), greedy("after", "Once upon a time", 4))
    ends = client.until_finished({"empty", "after"})
    assert ends["empty"]["ev"] == "failed"
    assert EMPTY_PROMPT in ends["empty"]["reason"]
    assert ends["after"]["ev"] == "done" and ends["after"]["completion_tokens"] == 4


async def test_node_with_four_slots_serves_four_streams(tmp_path: Path, tiny_gguf: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "tiny.gguf")
    fixtures = Path(__file__).parent.parent / "fixtures" / "nvml"
    config = Config(
        paths=PathsSection(
            data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", models_dirs=[models]
        ),
        inference=InferenceSection(threads=1, context_length=256, slots=4),
        telemetry=TelemetrySection(
            gpu_backend="replay", replay_file=fixtures / "h200-idle-then-busy.jsonl"
        ),
    )
    node = Node(config)
    await node.start()
    try:
        model = await node.load_model(models / "tiny.gguf")
        assert model.n_ctx == 256, "every slot keeps the configured context"
        requests = [
            GenerationRequest(prompt=f"request number {i}", max_tokens=8 + i, temperature=0.0)
            for i in range(4)
        ]
        streams = [node.generate(model.path, r) for r in requests]
        async with asyncio.timeout(LIMIT_S):
            texts = await asyncio.gather(*(s.text() for s in streams))
        for stream, request, text in zip(streams, requests, texts, strict=True):
            assert stream.stats.finish_reason in ("length", "stop")
            assert 0 < stream.stats.completion_tokens <= request.max_tokens
            assert text or stream.stats.finish_reason == "stop"
    finally:
        await node.stop()


def test_score_waits_for_running_sequences(
    workers: Callable[[], WorkerClient], tiny_gguf: Path
) -> None:
    """A score pass clears the whole KV cache, so in a batched worker it runs only once the
    sequences that were running have finished, and they finish intact."""
    client = workers()
    client.load(tiny_gguf, n_ctx=256, slots=4)
    client.send(
        greedy("gen", "hello world", 16),
        {"op": "score", "id": "s", "prompt": "hello", "output": " world"},
    )
    client.until(lambda f: f["ev"] == "scored" and f["id"] == "s")
    order = [(f["ev"], f.get("id")) for f in client.seen]
    assert ("done", "gen") in order, "the running sequence ended before the score pass"
    assert order.index(("done", "gen")) < order.index(("scored", "s"))
    scored = next(f for f in client.seen if f["ev"] == "scored")
    assert scored["ranks"] and all(rank >= 1 for rank in scored["ranks"])


def test_a_score_longer_than_one_sequences_share_is_refused_by_name(
    workers: Callable[[], WorkerClient], tiny_gguf: Path
) -> None:
    """A batched worker's context is slots times n_ctx, but a score pass runs in one sequence:
    past that sequence's n_ctx it says so (llama_decode failed with a bare code before)."""
    client = workers()
    client.load(tiny_gguf, n_ctx=256, slots=4)
    client.send({"op": "score", "id": "s", "prompt": "hello world " * 200, "output": " world"})
    *_, failed = client.until(lambda f: f["ev"] in ("failed", "scored") and f.get("id") == "s")
    assert failed["ev"] == "failed"
    assert "the context holds 256" in failed["reason"]
