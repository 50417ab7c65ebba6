"""What the one-at-a-time and the batched loops share per request: its plan (prompt fits,
token budget, seed) and its text (incremental UTF-8, stop strings), so both stream alike."""

from __future__ import annotations

import codecs
import ctypes
import random
from dataclasses import dataclass
from typing import Any

EMPTY_PROMPT = "the prompt has no tokens"  # the API maps these words to a 400
PIECE_BYTES = 64  # most tokens' text fits; a longer one is asked for again at its size


def token_bytes(llm: Any, token: int) -> bytes:
    """One token's text. llama-cpp-python's detokenize reads into 32 bytes and silently gives
    b"" for a longer piece (SmolLM2 has 47: runs of spaces, rules of dashes)."""
    import llama_cpp

    vocab = llm._model.vocab
    size = PIECE_BYTES
    while True:
        buffer = (ctypes.c_char * size)()
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
        if n >= 0:
            return buffer.raw[:n]
        size = -n  # the length it needs


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """A generate request checked against the context it will run in."""

    tokens: list[int]
    max_tokens: int
    seed: int
    stops: list[str]


def plan_request(
    tokens: list[int], message: dict[str, Any], n_ctx: int, default_seed: int
) -> RequestPlan:
    """Refuse a prompt the context cannot hold (the API maps this text to a 400) and cap the
    output at what is left of the context."""
    if not tokens:  # a model without BOS tokenizes "" to nothing: no logits to sample from
        raise ValueError(f"{EMPTY_PROMPT} to continue from; send some text")
    if len(tokens) >= n_ctx:
        raise ValueError(
            f"the prompt has {len(tokens)} tokens but the context holds {n_ctx}; "
            "shorten the prompt or raise inference.context_length"
        )
    max_tokens = min(int(message["max_tokens"]), n_ctx - len(tokens))
    # Seed every request: a seed set by one request must not leak into the next.
    seed = int(message.get("seed", -1))
    if seed < 0:
        seed = default_seed if default_seed >= 0 else random.getrandbits(31)
    stops = [str(s) for s in message.get("stop") or []]
    return RequestPlan(tokens=tokens, max_tokens=max_tokens, seed=seed, stops=stops)


class TextEmitter:
    """Turns token bytes into the text a client may see: never half a UTF-8 character, never
    a stop string or anything after it, and never the start of a stop string before it is
    known not to be one (stop "STOP" split over tokens "ST" + "OP" sends nothing of it)."""

    def __init__(self, stops: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._held = ""  # decoded text that may be the start of a stop string
        self._stopped = False

    def feed(self, data: bytes) -> tuple[str, bool]:
        """(the piece to send, whether a stop string ended the text)."""
        text = self._held + self._decoder.decode(data)
        self._held = ""
        if not self._stops or not text:
            return text, False
        hit = first_stop(text, self._stops)
        if hit is not None:
            self._stopped = True
            return text[:hit], True
        keep = _stop_prefix_at_end(text, self._stops)
        if keep:
            self._held = text[-keep:]
            return text[:-keep], False
        return text, False

    def tail(self) -> str:
        """What is left when the run ends (length, end of generation, cancel): held text that
        did not become a stop string, and an unfinished character as replacement text.
        Nothing after a stop string."""
        held, self._held = self._held, ""
        rest = held + self._decoder.decode(b"", final=True)
        return "" if self._stopped else rest


def _stop_prefix_at_end(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could begin a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


def first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None
