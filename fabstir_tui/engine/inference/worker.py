"""Inference worker process: owns one llama.cpp model, so a GGML abort or an unload frees
everything without touching the node (run as `python -m fabstir_tui.engine.inference.worker`)."""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
import time
from typing import Any, BinaryIO

from fabstir_tui.engine.inference.batched import BatchedGenerator, sequences_per_context
from fabstir_tui.engine.inference.request_text import TextEmitter, plan_request, token_bytes
from fabstir_tui.engine.inference.wire import encode_frame, read_frame_sync

# ggml levels: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continue. Its info lines (thousands
# per load) become our debug so the operator's log stays readable.
_LOG_LEVELS = {0: "debug", 1: "debug", 2: "debug", 3: "warning", 4: "error"}


# Token frames after a stream's first are held this long and written together: the engine then
# wakes ~40 times a second instead of once per token, and every wake on a machine whose cores
# all decode stalls llama.cpp's threads at their next barrier. The engine gathers 50 ms anyway.
HOLD_TOKENS_S = 0.025


class FrameWriter:
    """Serialises frames from the reader, the owner thread and llama.cpp's log callback."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._held: list[bytes] = []
        self._have_held = threading.Condition(self._lock)
        threading.Thread(target=self._flush_held, name="frame-flusher", daemon=True).start()

    def send(self, **message: Any) -> None:
        """Write a frame now, after any held token frames (the order is the protocol)."""
        data = encode_frame(message)
        with self._lock:
            self._write_locked(data)

    def token(self, rid: str, text: str, *, at_once: bool) -> None:
        """A token's text: at once for a stream's first (time to first token), else held."""
        if at_once:
            self.send(ev="tok", id=rid, text=text)
            return
        data = encode_frame({"ev": "tok", "id": rid, "text": text})
        with self._lock:
            self._held.append(data)
            if len(self._held) == 1:
                self._have_held.notify()

    def _flush_held(self) -> None:
        while True:
            with self._lock:
                while not self._held:
                    self._have_held.wait()
            time.sleep(HOLD_TOKENS_S)
            with self._lock:
                if self._held:
                    self._write_locked(b"")

    def _write_locked(self, data: bytes) -> None:
        held, self._held = self._held, []
        try:
            self._stream.write(b"".join(held) + data)  # buffered: loops over short writes
            self._stream.flush()
        except (BrokenPipeError, OSError):
            os._exit(0)  # the engine is gone: nothing left to serve


class ModelOwner:
    """The one thread that creates and uses the llama context (contexts are not thread-safe)."""

    def __init__(self, out: FrameWriter) -> None:
        self.out = out
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancels: dict[str, threading.Event] = {}
        self.cancels_lock = threading.Lock()
        self.llm: Any = None
        self.default_seed = -1
        self.chat_formatter: Any = None
        self.batched: BatchedGenerator | None = None
        self.thread = threading.Thread(target=self._run, name="llama-owner", daemon=True)

    def submit(self, message: dict[str, Any]) -> None:
        if message.get("op") == "generate":
            with self.cancels_lock:
                self.cancels[str(message["id"])] = threading.Event()
        self.jobs.put(message)

    def cancel(self, request_id: str) -> None:
        with self.cancels_lock:
            event = self.cancels.get(request_id)
        if event is not None:
            event.set()

    def _run(self) -> None:
        deferred: dict[str, Any] | None = None
        while True:
            message = deferred if deferred is not None else self.jobs.get()
            deferred = None
            if message is None or message.get("op") == "shutdown":
                return
            op = message.get("op")
            if op == "load":
                self._load(message)
            elif op == "generate" and self.batched is not None:
                # slots > 1: runs until idle; hands back a message that must wait for that.
                deferred = self.batched.serve(message)
            elif op == "generate":
                rid = str(message["id"])
                try:
                    self._generate(rid, message)
                except Exception as exc:
                    self.out.send(ev="failed", id=rid, reason=_safe_reason(exc, message))
                finally:
                    with self.cancels_lock:
                        self.cancels.pop(rid, None)
            elif op == "score":
                rid = str(message["id"])
                try:
                    self._score(rid, message)
                except Exception as exc:
                    self.out.send(ev="failed", id=rid, reason=_safe_reason(exc, message))

    def _load(self, message: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.out.send(ev="progress", stage="importing llama.cpp", fraction=0.15)
        slots = int(message.get("slots", 1))
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format

            install_log_router(self.out)
            install_load_progress(self.out)
            self.out.send(ev="progress", stage="loading weights", fraction=0.2)
            with sequences_per_context(slots):
                llm = llama_cpp.Llama(
                    model_path=message["path"],
                    # Batched: each sequence keeps the whole configured context.
                    n_ctx=int(message["n_ctx"]) * slots,
                    n_batch=max(int(message["n_batch"]), slots),  # llama.cpp aborts below
                    n_threads=int(message["n_threads"]),
                    n_threads_batch=int(message["n_threads"]),
                    n_gpu_layers=int(message["n_gpu_layers"]),
                    main_gpu=int(message["main_gpu"]),
                    flash_attn=bool(message.get("flash_attn", False)),
                    seed=int(message["seed"])
                    if int(message["seed"]) >= 0
                    else llama_cpp.LLAMA_DEFAULT_SEED,
                    verbose=False,
                )
        except Exception as exc:
            self.out.send(ev="load_failed", reason=str(exc) or type(exc).__name__)
            return
        self.out.send(ev="progress", stage="preparing chat template", fraction=0.9)
        template = llm.metadata.get("tokenizer.chat_template")
        chat_format = None
        if template:
            eos_id, bos_id = llm.token_eos(), llm.token_bos()
            self.chat_formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
                stop_token_ids=[eos_id],
            )
            chat_format = "gguf"
        self.llm = llm
        self.default_seed = int(message["seed"])
        n_ctx = llm.n_ctx()
        if slots > 1:
            self.batched = BatchedGenerator(self, slots)
            n_ctx = self.batched.n_ctx_seq  # what one request can use
        self.out.send(
            ev="loaded",
            n_ctx=n_ctx,
            n_threads=int(message["n_threads"]),
            n_gpu_layers=int(message["n_gpu_layers"]),
            chat_format=chat_format,
            load_s=time.perf_counter() - started,
            gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
            system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
            llama_cpp_version=str(llama_cpp.__version__),
        )

    def _prompt_tokens(self, message: dict[str, Any]) -> list[int]:
        llm = self.llm
        messages = message.get("messages")
        if messages is None:
            return list(llm.tokenize(str(message["prompt"]).encode("utf-8"), add_bos=True))
        if self.chat_formatter is not None:
            result = self.chat_formatter(messages=messages)
            return list(
                llm.tokenize(
                    result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
                )
            )
        # No template in the GGUF: a plain transcript is the honest fallback.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(llm.tokenize(text.encode("utf-8"), add_bos=True))

    def _generate(self, rid: str, message: dict[str, Any]) -> None:
        import llama_cpp

        with self.cancels_lock:
            cancel = self.cancels[rid]
        if cancel.is_set():
            self.out.send(
                ev="done", id=rid, prompt_tokens=0, completion_tokens=0, finish_reason="cancelled"
            )
            return
        llm = self.llm
        if llm is None:
            raise RuntimeError("no model is loaded in this worker")
        plan = plan_request(self._prompt_tokens(message), message, llm.n_ctx(), self.default_seed)
        tokens = plan.tokens
        llm.set_seed(plan.seed)
        self.out.send(ev="started", id=rid, prompt_tokens=len(tokens))
        text = TextEmitter(plan.stops)
        vocab = llm._model.vocab
        produced = 0
        sent = False  # the first text goes out at once
        finish = "length"
        generator = llm.generate(
            tokens,
            temp=float(message.get("temperature", 0.7)),
            top_k=int(message.get("top_k", 40)),
            top_p=float(message.get("top_p", 0.95)),
            min_p=float(message.get("min_p", 0.05)),
            repeat_penalty=float(message.get("repeat_penalty", 1.0)),
            reset=True,
        )
        try:
            for token in generator:
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                produced += 1
                piece, stopped = text.feed(token_bytes(llm, token))
                if piece:
                    self.out.token(rid, piece, at_once=not sent)
                    sent = True
                if stopped:
                    finish = "stop"
                    break
                if produced >= plan.max_tokens:
                    break
                if cancel.is_set():
                    finish = "cancelled"
                    break
        finally:
            generator.close()
        tail = text.tail()
        if tail:
            self.out.send(ev="tok", id=rid, text=tail)
        self.out.send(
            ev="done",
            id=rid,
            prompt_tokens=len(tokens),
            completion_tokens=produced,
            finish_reason=finish,
        )

    def _score(self, rid: str, message: dict[str, Any]) -> None:
        """Teacher-forced pass for `verify`: one prefill over prompt + output with logits at
        every output position; reports each output token's rank (1 = the model's top pick)."""
        llm = self.llm
        if llm is None:
            raise RuntimeError("no model is loaded in this worker")
        result = score_output(llm, str(message["prompt"]), str(message["output"]))
        self.out.send(ev="scored", id=rid, **result)


def _safe_reason(exc: Exception, message: dict[str, Any]) -> str:
    """An error for the engine that never quotes the prompt (library errors sometimes do)."""
    text = f"{type(exc).__name__}: {exc}"
    secrets = [str(message.get("prompt") or ""), str(message.get("output") or "")]
    secrets += [str(m.get("content", "")) for m in message.get("messages") or []]
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "<prompt>")
    return text if len(text) <= 300 else text[:297] + "..."


def score_output(llm: Any, prompt: str, output: str) -> dict[str, Any]:
    """Rank every output token under the model's logits at its position, the prompt tokenised
    as `_prompt_tokens` does a plain prompt; the KV cache is left empty for the next request."""
    import numpy as np

    prompt_tokens = list(llm.tokenize(prompt.encode("utf-8"), add_bos=True))
    joint = list(llm.tokenize((prompt + output).encode("utf-8"), add_bos=True))
    common = 0
    for a, b in zip(prompt_tokens, joint, strict=False):
        if a != b:
            break
        common += 1
    start = max(common, 1)  # the first token (BOS) has no position before it to score from
    import llama_cpp

    # One sequence's share: a batched worker's context is slots times this, seq 0 holds only this.
    n_ctx = int(llama_cpp.llama_n_ctx_seq(llm._ctx.ctx))
    n_batch, n_vocab = llm.n_batch, llm.n_vocab()
    if len(joint) > n_ctx:
        raise ValueError(
            f"prompt + output are {len(joint)} tokens but the context holds {n_ctx}; "
            "raise inference.context_length to verify this job"
        )
    ranks: list[int] = []
    best: list[int] = []
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    try:
        for offset in range(0, len(joint), n_batch):
            chunk = joint[offset : offset + n_batch]
            llm._batch.set_batch(batch=chunk, n_past=offset, logits_all=True)
            llm._ctx.decode(llm._batch)
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), n_vocab))
            for row in range(len(chunk)):
                position = offset + row  # these logits predict joint[position + 1]
                if start - 1 <= position < len(joint) - 1:
                    values = logits[row]
                    target = joint[position + 1]
                    ranks.append(int(np.count_nonzero(values > values[target])) + 1)
                    best.append(int(np.argmax(values)))
    finally:
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    scored = joint[start:]
    return {
        "prompt_tokens": len(prompt_tokens),
        "prefix_ok": common == len(prompt_tokens),
        "first_scored": start,
        "tokens": scored,
        "ranks": ranks,
        "best": best,
        "pieces": [token_bytes(llm, t).decode("utf-8", "replace") for t in scored],
        "best_pieces": [token_bytes(llm, t).decode("utf-8", "replace") for t in best],
    }


_log_callback_ref: Any = None
_progress_callback_ref: Any = None


def install_load_progress(out: FrameWriter) -> None:
    """Report llama.cpp's real weight-loading progress: a big model on a slow disk takes
    minutes, and the bindings expose no hook, so every model-params struct gets ours."""
    import llama_cpp

    global _progress_callback_ref
    if _progress_callback_ref is not None:
        return
    last = [-1.0]

    @llama_cpp.llama_progress_callback  # type: ignore[misc]
    def _callback(fraction: float, _user: ctypes.c_void_p) -> bool:
        if fraction - last[0] >= 0.02 or fraction >= 1.0:
            last[0] = fraction
            out.send(ev="progress", stage="loading weights", fraction=0.2 + 0.7 * fraction)
        return True

    import llama_cpp.llama_cpp as bindings  # the module Llama() calls through

    original = bindings.llama_model_default_params

    def params_with_progress() -> Any:
        params = original()
        params.progress_callback = _callback
        return params

    _progress_callback_ref = _callback
    bindings.llama_model_default_params = params_with_progress


def install_log_router(out: FrameWriter) -> None:
    """Send llama.cpp's own log lines to the engine instead of our stderr."""
    import llama_cpp

    global _log_callback_ref
    pending: list[str] = []
    last_level = ["debug"]

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        name = last_level[0] if level == 5 else _LOG_LEVELS.get(level, "debug")
        last_level[0] = name
        pending.append(text.decode("utf-8", errors="replace"))
        if pending[-1].endswith("\n"):
            line = "".join(pending).rstrip()
            pending.clear()
            if line:
                out.send(ev="log", level=name, text=line)

    _log_callback_ref = _callback
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def main() -> int:
    """Speak frames on the original stdout; everything else printed goes to stderr."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = FrameWriter(protocol)
    owner = ModelOwner(out)
    owner.thread.start()
    out.send(ev="hello", pid=os.getpid())
    stdin = sys.stdin.buffer
    while True:
        message = read_frame_sync(stdin)
        if message is None or message.get("op") == "shutdown":
            break
        if message.get("op") == "cancel":
            owner.cancel(str(message["id"]))
        else:
            owner.submit(message)
    # The engine closed our pipe or asked us to stop: exit now, freeing the model's memory.
    protocol.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
