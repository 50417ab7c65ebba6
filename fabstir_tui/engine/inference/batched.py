"""Continuous batching (inference.slots > 1): one llama context holds one sequence per slot
and every step is one llama_decode over new prompts' chunks plus one token per running
sequence, so N streams cost about one stream's weight reads per token (llama-server's
--parallel). Requests join and leave between steps; each keeps its own sampler chain."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabstir_tui.engine.inference.request_text import (
    RequestPlan,
    TextEmitter,
    plan_request,
    token_bytes,
)

if TYPE_CHECKING:
    from fabstir_tui.engine.inference.worker import ModelOwner


@contextlib.contextmanager
def sequences_per_context(slots: int) -> Iterator[None]:
    """Make the Llama built inside this block hold `slots` sequences, each with its own KV
    stream of n_ctx / slots cells: the bindings' constructor has no n_seq_max argument, so
    the default-params function it calls is wrapped for the duration (owner thread only)."""
    if slots <= 1:
        yield
        return
    import llama_cpp.llama_cpp as bindings  # the module Llama() calls through

    original = bindings.llama_context_default_params

    def params_with_sequences() -> Any:
        params = original()
        params.n_seq_max = slots
        params.kv_unified = False
        return params

    bindings.llama_context_default_params = params_with_sequences
    try:
        yield
    finally:
        bindings.llama_context_default_params = original


@dataclass(eq=False)
class Sequence:
    """One request occupying one sequence id of the shared context."""

    rid: str
    seq_id: int
    plan: RequestPlan
    sampler: Any  # llama_cpp._internals.LlamaSampler
    text: TextEmitter
    cancel: threading.Event
    fed: int = 0  # prompt tokens already decoded
    produced: int = 0
    next_token: int | None = None  # sampled, to be decoded at the next step
    logits_at: int = field(default=-1)  # batch index of this step's logits, -1 if none
    sent: bool = False  # some text went out (the first goes at once, later ones are held)

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.plan.tokens)


class BatchedGenerator:
    """Serves generate requests together on the owner thread until none is left running."""

    def __init__(self, owner: ModelOwner, slots: int) -> None:
        import llama_cpp

        self.owner = owner
        self.llm = owner.llm
        self.slots = slots
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self.llm._ctx.ctx))
        self.n_batch = int(self.llm.n_batch)
        self.vocab = self.llm._model.vocab
        self.memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.free_ids = list(range(slots))
        self.active: list[Sequence] = []

    def close(self) -> None:
        import llama_cpp

        llama_cpp.llama_batch_free(self.batch)

    def serve(self, first: dict[str, Any]) -> dict[str, Any] | None:
        """Run `first` and every generate request that arrives meanwhile; returns the first
        other message (load, score) once no sequence runs, which the caller then handles: a
        score pass clears the whole KV cache, so it must wait for the batch to drain."""
        deferred: dict[str, Any] | None = None
        self._admit(first)
        try:
            while True:
                while deferred is None and self.free_ids:
                    try:
                        message = self.owner.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if message is not None and message.get("op") == "generate":
                        self._admit(message)
                    else:
                        deferred = message if message is not None else {"op": "shutdown"}
                if not self.active:
                    return deferred
                self._step()
        except Exception as exc:  # a library failure: fail everyone, keep the worker
            for seq in list(self.active):
                self._fail(seq, exc)
            self.owner.out.send(
                ev="log", level="error", text=f"batched generation failed: {_describe(exc)}"
            )
            return deferred

    def _admit(self, message: dict[str, Any]) -> None:
        rid = str(message["id"])
        with self.owner.cancels_lock:
            cancel = self.owner.cancels.get(rid) or threading.Event()
        if cancel.is_set():
            self.owner.out.send(
                ev="done", id=rid, prompt_tokens=0, completion_tokens=0, finish_reason="cancelled"
            )
            self._forget(rid)
            return
        try:
            tokens = self.owner._prompt_tokens(message)
            plan = plan_request(tokens, message, self.n_ctx_seq, self.owner.default_seed)
            self.llm.set_seed(plan.seed)  # _init_sampler seeds dist() from the Llama's seed
            sampler = self.llm._init_sampler(
                temp=float(message.get("temperature", 0.7)),
                top_k=int(message.get("top_k", 40)),
                top_p=float(message.get("top_p", 0.95)),
                min_p=float(message.get("min_p", 0.05)),
                repeat_penalty=float(message.get("repeat_penalty", 1.0)),
            )
        except Exception as exc:
            from fabstir_tui.engine.inference.worker import _safe_reason

            self.owner.out.send(ev="failed", id=rid, reason=_safe_reason(exc, message))
            self._forget(rid)
            return
        seq_id = self.free_ids.pop(0)
        self.active.append(
            Sequence(rid, seq_id, plan, sampler, TextEmitter(plan.stops), cancel, fed=0)
        )
        self.owner.out.send(ev="started", id=rid, prompt_tokens=len(tokens))

    def _step(self) -> None:
        """One llama_decode for every running sequence, then one sampled token for each
        sequence whose logits it produced."""
        import llama_cpp

        batch = self.batch
        n = 0

        def add(seq: Sequence, token: int, pos: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = logits
            if logits:
                seq.logits_at = n
            n += 1

        for seq in list(self.active):
            seq.logits_at = -1
            if seq.cancel.is_set():
                self._finish(seq, "cancelled")
        for seq in list(self.active):
            if not seq.prefilling and seq.next_token is None:  # nothing to decode: never spin
                self._fail(seq, RuntimeError("the sequence has no token to decode"))
        # llama.cpp puts sequences of split KV streams in one ubatch only when their ids come
        # in increasing consecutive order: arrival order would split a step into passes.
        by_id = sorted(self.active, key=lambda seq: seq.seq_id)
        for seq in by_id:
            if not seq.prefilling and seq.next_token is not None and n < self.n_batch:
                add(seq, seq.next_token, len(seq.plan.tokens) + seq.produced - 1, True)
        for seq in by_id:
            if seq.prefilling and n < self.n_batch:
                # Chunks start at the sequence's own offsets, as Llama.eval's do alone.
                chunk = seq.plan.tokens[seq.fed : seq.fed + self.n_batch - n]
                last = seq.fed + len(chunk) == len(seq.plan.tokens)
                for i, token in enumerate(chunk):
                    add(seq, token, seq.fed + i, last and i == len(chunk) - 1)
                seq.fed += len(chunk)
        if n == 0:
            return
        batch.n_tokens = n
        code = llama_cpp.llama_decode(self.llm._ctx.ctx, batch)
        if code != 0:  # no KV room or a backend error: every sequence's state is suspect
            for seq in list(self.active):
                self._fail(seq, RuntimeError(f"llama_decode returned {code}"))
            return
        for seq in list(self.active):
            if seq.logits_at >= 0:
                self._sample(seq)

    def _sample(self, seq: Sequence) -> None:
        import llama_cpp

        try:
            token = int(
                llama_cpp.llama_sampler_sample(
                    seq.sampler.sampler, self.llm._ctx.ctx, seq.logits_at
                )
            )
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                self._finish(seq, "stop")
                return
            seq.produced += 1
            piece, stopped = seq.text.feed(token_bytes(self.llm, token))
        except Exception as exc:
            self._fail(seq, exc)
            return
        if piece:
            self.owner.out.token(seq.rid, piece, at_once=not seq.sent)
            seq.sent = True
        if stopped:
            self._finish(seq, "stop")
        elif seq.produced >= seq.plan.max_tokens:
            self._finish(seq, "length")
        elif seq.cancel.is_set():
            self._finish(seq, "cancelled")
        else:
            seq.next_token = token

    def _finish(self, seq: Sequence, finish: str) -> None:
        tail = seq.text.tail()
        if tail:
            self.owner.out.send(ev="tok", id=seq.rid, text=tail)
        self._release(seq)
        self.owner.out.send(
            ev="done",
            id=seq.rid,
            prompt_tokens=len(seq.plan.tokens),
            completion_tokens=seq.produced,
            finish_reason=finish,
        )

    def _fail(self, seq: Sequence, exc: Exception) -> None:
        self._release(seq)
        self.owner.out.send(ev="failed", id=seq.rid, reason=_describe(exc))

    def _release(self, seq: Sequence) -> None:
        """Free the sequence's KV cells, sampler and id so the next request can have them."""
        import llama_cpp

        if seq in self.active:
            self.active.remove(seq)
            llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
            seq.sampler.close()
            self.free_ids.append(seq.seq_id)
            self.free_ids.sort()
        self._forget(seq.rid)

    def _forget(self, rid: str) -> None:
        with self.owner.cancels_lock:
            self.owner.cancels.pop(rid, None)


def _describe(exc: Exception) -> str:
    """A library error in words; these come from decoding and sampling, never quote a prompt."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
