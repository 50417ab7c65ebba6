"""The hand-written Prometheus text format, checked against Prometheus' own parser; and the
helpers that keep secrets out of the public status document."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fabstir_tui.commands.status import url_from_listen
from fabstir_tui.config import ChainSection, Config
from fabstir_tui.engine.api.metrics import EventCounters, model_labels
from fabstir_tui.engine.api.prom_text import Exposition, format_value
from fabstir_tui.engine.api.status import redact, safe_url
from fabstir_tui.engine.chain.rpc_pool import url_host
from fabstir_tui.engine.events import GenerationFinished


@given(st.text())
def test_label_values_and_help_survive_the_parser(value: str) -> None:
    # Label values come from outside (model file names, token symbols read from the chain).
    help_text = 'a "quoted" back\\slash\nand a second line'
    out = Exposition()
    out.add("fabstir_x", "gauge", help_text, 1.5, {"model": value, "kind": "k"})
    [family] = list(text_string_to_metric_families(out.render()))
    assert family.documentation == help_text
    [sample] = family.samples
    assert sample.labels == {"model": value, "kind": "k"}
    assert sample.value == 1.5


def test_families_stay_together_whatever_the_add_order() -> None:
    out = Exposition()
    out.add("fabstir_tokens_total", "counter", "tokens", 1, {"model": "a"})
    out.add("fabstir_up", "gauge", "up", True)
    out.add("fabstir_tokens_total", "counter", "tokens", 2, {"model": "b"})
    out.declare("fabstir_empty", "gauge", "no samples yet")
    text = out.render()
    lines = text.splitlines()
    assert lines[2:4] == ['fabstir_tokens_total{model="a"} 1', 'fabstir_tokens_total{model="b"} 2']
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["fabstir_tokens"].type == "counter"
    assert [s.value for s in families["fabstir_tokens"].samples] == [1, 2]
    assert families["fabstir_empty"].samples == []


def test_values_are_exact_and_specials_spelled_as_go_does() -> None:
    assert format_value(10**30) == "1" + "0" * 30  # wei amounts: not rounded through a float
    assert format_value(True) == "1"
    assert format_value(float("nan")) == "NaN"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(0.25) == "0.25"


def test_invalid_names_are_refused() -> None:
    out = Exposition()
    with pytest.raises(ValueError, match="metric name"):
        out.add("fabstir-x", "gauge", "", 1)
    with pytest.raises(ValueError, match="label name"):
        out.add("fabstir_x", "gauge", "", 1, {"bad-label": "v"})
    with pytest.raises(ValueError, match="declared as gauge"):
        out.add("fabstir_x", "counter", "", 1)


def test_rpc_urls_lose_their_keys() -> None:
    assert safe_url("https://user:pw@rpc.example.com:8545/v3/KEY?x=1") == (
        "https://rpc.example.com:8545"
    )
    assert safe_url("wss://eth.example.org/ws/SECRET") == "wss://eth.example.org"
    config = Config(chain=ChainSection(rpc_urls=["https://rpc.example.com/v3/KEY"]))
    message = "RPC https://rpc.example.com/v3/KEY answered 429"
    assert redact(message, config) == "RPC https://rpc.example.com answered 429"
    # What the chain side writes already shortened (url_host) still loses the password.
    secret = "https://user:secret@rpc.example.com/v3/KEY?key=K2"
    assert url_host(secret) == "https://rpc.example.com"
    said = f"RPC {url_host('https://user:secret@rpc.example.com')} failed; also wss://a:b@x.io/ws"
    assert redact(said, config) == "RPC https://rpc.example.com failed; also wss://x.io/ws"


def test_status_url_from_the_listen_address() -> None:
    assert url_from_listen("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert url_from_listen("0.0.0.0:9000") == "http://127.0.0.1:9000"
    assert url_from_listen("[::]:8080") == "http://[::1]:8080"


def test_models_sharing_a_file_name_get_distinct_labels() -> None:
    labels = model_labels(["/m/llama/model.gguf", "/m/qwen/model.gguf", "/m/tiny.gguf"])
    assert labels == {
        "/m/llama/model.gguf": "llama/model.gguf",
        "/m/qwen/model.gguf": "qwen/model.gguf",
        "/m/tiny.gguf": "tiny.gguf",
    }
    assert model_labels(["/a/x/m.gguf", "/b/x/m.gguf"]) == {
        "/a/x/m.gguf": "a/x/m.gguf",
        "/b/x/m.gguf": "b/x/m.gguf",
    }


def test_the_speed_gauge_ignores_replies_too_short_to_time() -> None:
    counters = EventCounters()

    def finished(tokens: int, speed: float) -> GenerationFinished:
        return GenerationFinished("r", "/m/a.gguf", 5, tokens, "stop", 0.01, speed)

    counters.apply(finished(64, 80.0))
    counters.apply(finished(2, 5000.0))  # two tokens 0.2 ms apart
    totals = counters.model("/m/a.gguf")
    assert (totals.last_tokens_per_s, totals.finished, totals.completion_tokens) == (80.0, 2, 66)
