"""Receipts of batched runs name the parallelism; unbatched receipts stay exactly as before,
and the shared text helper streams what the one-at-a-time loop always streamed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from fabstir_tui.config import InferenceSection
from fabstir_tui.engine.events import LoadedModel
from fabstir_tui.engine.inference.request_text import TextEmitter, plan_request
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.p2p.receipt_protocol import FinishedJob, runtime_settings
from fabstir_tui.engine.proofs.receipt import runtime_hash

MODEL = LoadedModel("/m/x.gguf", "x", 1, 2048, 4, 0, False, 0.1, None)
JOB = FinishedJob(None, None, "", MODEL, GenerationRequest(prompt="hi", temperature=0.0), "", 1, 1)
# The keys unbatched receipts have always hashed; slots = 1 must not add one.
UNBATCHED_KEYS = {
    "llama_cpp_version",
    "backend",
    "n_gpu_layers",
    "threads",
    "batch_size",
    "n_ctx",
    "flash_attn",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "seed",
    "max_tokens",
}


def _runtime(slots: int) -> dict[str, Any]:
    node = SimpleNamespace(config=SimpleNamespace(inference=InferenceSection(slots=slots)))
    return runtime_settings(cast(Any, node), JOB)


def test_unbatched_runtime_is_unchanged_and_batched_names_parallel() -> None:
    one, four = _runtime(1), _runtime(4)
    assert set(one) == UNBATCHED_KEYS
    assert four == {**one, "parallel": 4}
    # A batched receipt's runtime hash differs, so `verify` falls back to the top-k check.
    assert runtime_hash(four) != runtime_hash(one)


def test_text_emitter_holds_split_characters_and_cuts_at_stops() -> None:
    text = TextEmitter(["STOP"])
    euro = "€".encode()
    assert text.feed(euro[:2]) == ("", False)
    assert text.feed(euro[2:] + b" ok") == ("€ ok", False)
    assert text.feed(b" yes STOP and more") == (" yes ", True)
    split = TextEmitter(["STOP"])
    assert split.feed(b"go ST") == ("go ", False)  # "ST" may begin the stop string
    assert split.feed(b"OP now") == ("", True)
    passed = TextEmitter(["STOP"])
    assert passed.feed(b"a ST") == ("a ", False)
    assert passed.feed(b"ay") == ("STay", False)  # it did not: sent after all
    assert passed.feed(b" S") == (" ", False)
    assert passed.tail() == "S"  # the run ended without a stop: the held text goes out
    plain = TextEmitter([])
    assert plain.feed(b"\xe2\x82") == ("", False)
    assert plain.tail() == "\ufffd"


def test_plan_caps_output_at_the_context_left_and_refuses_overlong_prompts() -> None:
    plan = plan_request([1] * 10, {"max_tokens": 100, "seed": 7}, 64, -1)
    assert (plan.max_tokens, plan.seed, plan.stops) == (54, 7, [])
    try:
        plan_request([1] * 64, {"max_tokens": 1}, 64, -1)
    except ValueError as exc:
        assert "the prompt has 64 tokens but the context holds 64" in str(exc)
    else:
        raise AssertionError("a prompt filling the context must be refused")


def test_verify_regenerates_alone_so_its_runtime_never_claims_parallel() -> None:
    from fabstir_tui.engine.inference.worker_process import WorkerLoaded
    from fabstir_tui.engine.proofs.verify import own_runtime

    loaded = WorkerLoaded(2048, 4, 0, None, 0.1, False, "", "")
    mine = own_runtime(JOB.generation, loaded, "/m/x.gguf", InferenceSection(slots=8))
    assert mine == _runtime(1)


def test_an_empty_prompt_is_the_clients_error() -> None:
    from fabstir_tui.engine.api.runs import batch_error
    from fabstir_tui.engine.serving.links import Batch

    try:
        plan_request([], {"max_tokens": 4}, 64, -1)
    except ValueError as exc:
        error = batch_error(Batch(error={"code": "generation_failed", "message": str(exc)}))
    else:
        raise AssertionError("an empty prompt must be refused")
    assert (error.status, error.code) == (400, "empty_prompt")
