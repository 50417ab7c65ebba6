"""The engine's side of one inference worker: spawn, load, stream, cancel, reap."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fabstir_tui.engine.inference.stream import (
    GenerationRequest,
    InferenceError,
    TokenStream,
    WorkerDiedError,
)
from fabstir_tui.engine.inference.wire import FrameError, encode_frame, read_frame

LogSink = Callable[[str, str], None]
ProgressSink = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """What the worker needs to create the context; comes from config.inference."""

    path: str
    n_ctx: int
    n_batch: int
    n_threads: int
    n_gpu_layers: int
    main_gpu: int
    seed: int
    slots: int = 1  # > 1: one context with a sequence per slot, n_ctx cells each (batched)
    flash_attn: bool = False  # inference.flash_attention (the config's default is on)


@dataclass(frozen=True, slots=True)
class WorkerLoaded:
    n_ctx: int
    n_threads: int
    n_gpu_layers: int
    chat_format: str | None
    load_s: float
    gpu_offload: bool
    system_info: str
    llama_cpp_version: str


_ids = itertools.count(1)
UNLOADED = "unloaded"  # the exit reason of a worker we stopped on purpose


def describe_exit(returncode: int | None) -> str:
    """Turn a return code into words an operator understands."""
    if returncode is None:
        return "it stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the kernel's out-of-memory killer sends this too)" if name == "SIGKILL" else ""
        hint = " (llama.cpp hit an internal assertion)" if name == "SIGABRT" else hint
        return f"it was killed by {name}{hint}"
    return f"it exited with code {returncode}"


class WorkerProcess:
    """One `python -m ...worker` child holding one model; its death fails only its streams."""

    def __init__(self, path: str, on_log: LogSink, on_exit: Callable[[WorkerProcess, str], None]):
        self.path = path
        self._on_log = on_log
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._streams: dict[str, TokenStream] = {}
        self._scores: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded: asyncio.Future[WorkerLoaded] | None = None
        self._progress: ProgressSink | None = None
        self._stopping = False
        self.exit_reason: str | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self.exit_reason

    async def start(self, settings: LoadSettings, progress: ProgressSink) -> WorkerLoaded:
        """Spawn the worker and load the model; raises InferenceError with the reason."""
        self._progress = progress
        progress("starting worker process", 0.05)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fabstir_tui.engine.inference.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C at the terminal is the node's to handle
            limit=1 << 20,
        )
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        self._tasks = [
            asyncio.create_task(self._read_frames(), name=f"worker-frames-{self.pid}"),
            asyncio.create_task(self._read_stderr(), name=f"worker-stderr-{self.pid}"),
        ]
        self._send({"op": "load", **asdict(settings)})
        try:
            return await self._loaded
        except BaseException:
            await self.stop()
            raise

    def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            raise WorkerDiedError(f"the inference worker for {self.path} is not running")
        proc.stdin.write(encode_frame(message))

    def generate(self, request: GenerationRequest) -> TokenStream:
        if not self.alive:
            raise WorkerDiedError(
                f"the inference worker for {self.path} is not running; load the model again"
            )
        rid = f"r{next(_ids)}"
        stream = TokenStream(request_id=rid, _cancel=self._cancel)
        self._streams[rid] = stream
        self._send({"op": "generate", "id": rid, **request.to_wire()})
        return stream

    async def score(self, prompt: str, output: str) -> dict[str, Any]:
        """Teacher-forced ranks of `output`'s tokens after `prompt` (what `verify` checks);
        see worker.score_output for the fields. Raises InferenceError / WorkerDiedError."""
        if not self.alive:
            raise WorkerDiedError(
                f"the inference worker for {self.path} is not running; load the model again"
            )
        rid = f"s{next(_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._scores[rid] = future
        try:
            self._send({"op": "score", "id": rid, "prompt": prompt, "output": output})
            return await future
        finally:
            self._scores.pop(rid, None)

    async def _cancel(self, request_id: str) -> None:
        with contextlib.suppress(InferenceError):
            self._send({"op": "cancel", "id": request_id})

    async def _read_frames(self) -> None:
        """Feed streams until the worker's pipe ends; whatever happens, report its end."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                message = await read_frame(proc.stdout)
                if message is None:
                    break
                try:
                    self._dispatch(message)
                except (KeyError, TypeError, ValueError) as exc:
                    raise FrameError(f"unexpected frame {message.get('ev')!r}: {exc}") from exc
        except FrameError as exc:
            self._on_log("error", f"inference worker {self.pid} sent a broken frame: {exc}")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        finally:
            await proc.wait()
            # Let stderr finish so the reason can quote the worker's last words, but never
            # wait on a grandchild that inherited the pipe.
            if len(self._tasks) > 1:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._tasks[1]), 2.0)
            self._died(proc.returncode)

    def _dispatch(self, message: dict[str, Any]) -> None:
        ev = message.get("ev")
        rid = str(message.get("id", ""))
        stream = self._streams.get(rid)
        if ev == "tok" and stream is not None:
            stream.feed_token(str(message["text"]))
        elif ev == "started" and stream is not None:
            stream.feed_started(int(message["prompt_tokens"]))
        elif ev == "done" and stream is not None:
            stream.feed_done(
                int(message["prompt_tokens"]),
                int(message["completion_tokens"]),
                str(message["finish_reason"]),
            )
            self._forget(rid)
        elif ev == "failed" and stream is not None:
            stream.feed_error(InferenceError(str(message["reason"])))
            self._forget(rid)
        elif ev in ("scored", "failed") and rid in self._scores:
            future = self._scores.pop(rid)
            if future.done():
                pass
            elif ev == "scored":
                future.set_result({k: v for k, v in message.items() if k not in ("ev", "id")})
            else:
                future.set_exception(InferenceError(str(message["reason"])))
        elif ev == "log":
            self._on_log(str(message.get("level", "debug")), str(message.get("text", "")))
        elif ev == "progress" and self._progress is not None:
            self._progress(str(message["stage"]), float(message["fraction"]))
        elif ev == "loaded" and self._loaded is not None and not self._loaded.done():
            fields = {k: message[k] for k in WorkerLoaded.__dataclass_fields__}
            self._loaded.set_result(WorkerLoaded(**fields))
        elif ev == "load_failed" and self._loaded is not None and not self._loaded.done():
            self._loaded.set_exception(InferenceError(str(message["reason"])))

    def _forget(self, rid: str) -> None:
        self._streams.pop(rid, None)

    async def _read_stderr(self) -> None:
        """Keep the worker's last stderr lines (its dying words); chunked: no line too long."""
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        pending = b""
        while chunk := await proc.stderr.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            pending = pending[-4096:]
            for raw in lines:
                line = raw[:4096].decode("utf-8", "replace").rstrip()
                if line:
                    self._stderr_tail.append(line)
                    self._on_log("debug", line)

    def _died(self, returncode: int | None) -> None:
        if self.exit_reason is not None:
            return
        last = f"; its last words: {self._stderr_tail[-1]}" if self._stderr_tail else ""
        name = os.path.basename(self.path)
        if self._stopping:
            self.exit_reason = UNLOADED
            error = WorkerDiedError(f"{name} was unloaded while this request was running")
        else:
            self.exit_reason = f"the inference worker for {name} died: " + (
                describe_exit(returncode) + last
            )
            error = WorkerDiedError(self.exit_reason)
        loading = self._loaded is not None and not self._loaded.done()
        if self._loaded is not None and loading:
            # Never loaded: the load's own failure is the one report, not a "died" too.
            self._loaded.set_exception(InferenceError(describe_exit(returncode) + last))
        for stream in list(self._streams.values()):
            stream.feed_error(error)
        self._streams.clear()
        for future in self._scores.values():
            if not future.done():
                future.set_exception(error)
        self._scores.clear()
        if not loading:
            self._on_exit(self, self.exit_reason)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit, then make sure: the OS reclaims all of the model's memory."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(InferenceError, ConnectionError):
                self._send({"op": "shutdown"})
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
