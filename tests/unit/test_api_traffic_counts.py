"""ApiTraffic's bookkeeping (the last minute's rate, bounded refusal labels), the header's API
segment and its fit in 80 columns, the `fabstir-tui status` line and the demo's API switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabstir_tui.commands.run_node import demo_layer
from fabstir_tui.commands.status import human_status
from fabstir_tui.config import load_config
from fabstir_tui.engine.api.traffic import MAX_ERROR_CODES, OTHER, ApiSnapshot, ApiTraffic
from fabstir_tui.engine.chain.anvil import ANVIL_ENV
from fabstir_tui.ui.screens.base import api_summary
from fabstir_tui.ui.widgets.status_header import SEPARATOR, Segment, fit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_per_minute_counts_arrivals_of_the_last_sixty_seconds_only() -> None:
    clock = Clock()
    traffic = ApiTraffic(clock)
    for _ in range(3):
        traffic._arrived()
    clock.now += 30
    traffic._arrived()
    assert traffic.per_minute() == 4
    clock.now += 31  # the first three are now 61 s old
    assert traffic.per_minute() == 1
    clock.now += 60
    assert traffic.per_minute() == 0
    assert traffic.snapshot().per_minute == 0


def test_refusal_codes_beyond_the_cap_fold_into_other() -> None:
    traffic = ApiTraffic(Clock())
    for index in range(MAX_ERROR_CODES + 5):
        traffic.record("/v1/completions", 400, f"code_{index}")
    traffic.record("/v1/completions", 400, "code_0")  # a known code keeps its own label
    refusals = dict(traffic.snapshot().refusals)
    assert len(refusals) == MAX_ERROR_CODES + 1
    assert refusals[OTHER] == 5 and refusals["code_0"] == 2
    snap = traffic.snapshot("http://127.0.0.1:8080")
    total = MAX_ERROR_CODES + 6
    assert (snap.requests_total, snap.errors_total, snap.port) == (total, total, 8080)


def snapshot(open_requests: int = 3, per_minute: int = 12) -> ApiSnapshot:
    return ApiSnapshot("http://127.0.0.1:8080", open_requests, 0, 40, 2, per_minute)


def test_the_header_segment_says_port_open_requests_and_rate_or_why_not() -> None:
    assert api_summary(True, snapshot(), "running") == "API :8080 · 3 open · 12/min"
    assert api_summary(False, None, "running") == ""  # no segment: the API is off
    assert api_summary(True, None, "starting") == "API …"
    assert api_summary(True, None, "running") == "API failed"


def test_a_full_header_with_the_api_segment_still_fits_80_columns() -> None:
    texts = [
        "host-1 running",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "H200 87% 61°C",
        "CPU  37% RAM  33%",
        api_summary(True, snapshot(128, 4500), "running"),
        "P2P 2 peers reachable 127.0.0.1:4001",
    ]
    segments = [Segment(t, keep=i == 0) for i, t in enumerate(texts)]
    fitted = fit(segments, 80)
    assert sum(s.width for s in fitted) + len(SEPARATOR) * (len(fitted) - 1) <= 80
    assert fitted[4].text.startswith("API :8080")


def test_status_prints_the_api_traffic_after_its_url() -> None:
    doc = {
        "name": "n",
        "state": "running",
        "version": "1",
        "api": {
            "enabled": True,
            "running": True,
            "url": "http://127.0.0.1:8080",
            "open_requests": 3,
            "open_websockets": 1,
            "requests_total": 40,
            "errors_total": 2,
            "per_minute": 12,
        },
    }
    line = human_status(doc, "http://127.0.0.1:8080").splitlines()[1]
    assert line == (
        "api       http://127.0.0.1:8080 (3 open, 1 websockets, 12 requests/min, "
        "40 requests, 2 errors)"
    )
    del doc["api"]  # a node from before this field: the URL alone
    assert human_status(doc, "http://x:1").splitlines()[1] == "api       http://x:1"


@pytest.mark.parametrize(
    ("toml", "enabled", "listen"),
    [
        ("", True, "127.0.0.1:0"),
        ("[api]\nenabled = false\n", False, "127.0.0.1:8080"),
        ('[api]\nlisten = "127.0.0.1:9999"\n', True, "127.0.0.1:9999"),
    ],
)
def test_the_demo_turns_the_api_on_at_a_free_loopback_port_unless_the_operator_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, enabled: bool, listen: str
) -> None:
    monkeypatch.setenv(ANVIL_ENV, str(tmp_path / "no-anvil"))  # the chainless demo: no devnet
    config_file = tmp_path / "config.toml"
    config_file.write_text(f'[paths]\ndata_dir = "{tmp_path / "d"}"\n{toml}')
    base = load_config(config_file, env={})
    extra, _chain, _model = demo_layer(base, {}, headless=True, once=True, auto=False)
    demo = load_config(config_file, env={}, cli=extra).config.api
    assert (demo.enabled, demo.listen) == (enabled, listen)
