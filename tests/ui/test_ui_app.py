"""The app around a real node: dashboard, keys, themes, palette, help, logs, quit, 80x24."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from textual.command import CommandList, CommandPalette
from textual.filter import Monochrome, NoColor
from textual.geometry import Region
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Input, RichLog
from ui_helpers import NO_DRIVER_REPLAY, key, wait_for

from fabstir_tui.engine.node import Node
from fabstir_tui.engine.store import Store
from fabstir_tui.ui.app import EVERYWHERE, FabstirApp
from fabstir_tui.ui.screens.dashboard import DashboardScreen
from fabstir_tui.ui.screens.help import HelpScreen
from fabstir_tui.ui.screens.logs import LogsScreen
from fabstir_tui.ui.screens.models import ModelsScreen
from fabstir_tui.ui.screens.playground import PlaygroundScreen
from fabstir_tui.ui.screens.quit_confirm import QuitScreen
from fabstir_tui.ui.widgets.gpu_area import GpuArea
from fabstir_tui.ui.widgets.gpu_panel import GpuPanel
from fabstir_tui.ui.widgets.host_panel import HostPanel
from fabstir_tui.ui.widgets.metric_row import MetricRow
from fabstir_tui.ui.widgets.model_panel import ModelPanel
from fabstir_tui.ui.widgets.no_gpu_panel import NoGpuPanel
from fabstir_tui.ui.widgets.status_header import SEPARATOR, Segment, StatusHeader, fit

NodeFactory = Callable[..., Node]


def on_screen(widget: Widget, screen: Region) -> bool:
    return widget.display and widget.region.area > 0 and screen.contains_region(widget.region)


async def test_dashboard_draws_the_replayed_gpu_and_the_host(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        dashboard = app.screen
        assert isinstance(dashboard, DashboardScreen)
        area = dashboard.query_one(GpuArea)
        await wait_for(pilot, lambda: 0 in area.panels and area.panels[0].samples >= 3, "samples")
        await wait_for(pilot, lambda: area.panels[0].border_title, "the panel to be drawn")
        panel = area.panels[0]
        assert panel.border_title == "GPU0 NVIDIA H200"
        assert panel.query_one("#gpu-mem", MetricRow).value_text.endswith("/140.4 GiB")
        assert panel.query_one("#gpu-power", MetricRow).value_text.endswith("/700 W")
        assert not dashboard.query_one(NoGpuPanel).display
        header = dashboard.query_one(StatusHeader)
        assert header.node_name == "ui-test-node"
        assert header.node_state == "running"
        assert header.gpu_text.startswith("H200 ")
        assert header.gpu_text.endswith("(replay)"), "a recording is never shown as live"
        assert panel.border_subtitle == "replayed recording"
        await wait_for(pilot, lambda: dashboard.query_one(HostPanel).snapshot, "a host reading")
        assert header.host_text.startswith("CPU ")
        assert dashboard.query_one(ModelPanel).loaded == ()


async def test_no_gpu_panel_says_why(node_for: NodeFactory) -> None:
    node = node_for(replay=NO_DRIVER_REPLAY)
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        dashboard = app.screen
        no_gpu = dashboard.query_one(NoGpuPanel)
        await wait_for(pilot, lambda: no_gpu.reason is not None, "the reason")
        assert no_gpu.display
        assert "NVMLError_LibraryNotFound" in (no_gpu.reason or "")
        assert dashboard.query_one(GpuArea).panels == {}
        assert dashboard.query_one(StatusHeader).gpu_text == "no GPU (CPU)"
        assert on_screen(no_gpu, dashboard.region)


async def test_model_panel_shows_how_the_model_runs_and_its_last_speed(
    node_for: NodeFactory, models_dir: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        panel = app.screen.query_one(ModelPanel)
        path = key(models_dir / "tiny-llama.gguf")
        await app.load_model(path)
        await wait_for(pilot, lambda: panel.loaded, "the model panel")
        assert panel.loaded[0].n_threads == 1
        stream = node.generate(path, _request())
        await stream.text()
        await wait_for(pilot, lambda: panel.last_runs, "the run figures")
        [(run_path, figures)] = panel.last_runs
        assert run_path == path
        assert figures.completion_tokens == 8
        assert figures.tokens_per_s == stream.stats.tokens_per_s


def _request() -> object:
    from fabstir_tui.engine.inference.stream import GenerationRequest

    return GenerationRequest(prompt="hello", max_tokens=8)


async def test_t_cycles_themes_and_audits_it(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "fabstir-dark"
        await pilot.press("t")
        assert app.theme == "fabstir-light"
        await pilot.press("t", "t")
        assert app.theme == "fabstir-dark"
        switches = [a.detail for a in node.recent_audit() if a.action == "switch theme"]
        assert switches == [
            "fabstir-dark -> fabstir-light",
            "fabstir-light -> fabstir-16",
            "fabstir-16 -> fabstir-dark",
        ]


async def test_unknown_theme_falls_back_with_a_notification(node_for: NodeFactory) -> None:
    node = node_for(theme="no-such-theme")
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.theme == "fabstir-dark"
        texts = [n.message for n in app._notifications]
        assert any("'no-such-theme' is not installed" in t for t in texts)


async def test_a_textual_theme_by_name_still_draws_our_domain_colours(
    node_for: NodeFactory,
) -> None:
    node = node_for(theme="nord")
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query(GpuPanel), "a GPU panel")
        assert app.theme == "nord"
        assert app.theme_variables["gpu-hot"] == app.theme_variables["error"]


async def test_palette_runs_a_command_by_name(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "the node")
        titles = [c.title for c in app.palette_commands()]
        for expected in (
            "Go to Dashboard",
            "Go to Models",
            "Go to Logs",
            "Load model tiny-llama.gguf",
            "Open playground on tiny-llama.gguf",
            "Rescan model folders",
            "Theme: fabstir-16",
            "Show keys",
            "Quit",
        ):
            assert expected in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"fabstir-16")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, CommandPalette)
            and app.screen.query_one(CommandList).option_count > 0,
            "palette hits",
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "fabstir-16", "the theme from the palette")
        assert any(a.action == "switch theme" for a in node.recent_audit())


async def test_help_lists_every_key(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        rows = {(r.key, r.where) for r in help_screen.rows}
        for row in (
            ("1", EVERYWHERE),
            ("3", EVERYWHERE),
            ("4", EVERYWHERE),
            ("5", EVERYWHERE),
            ("7", EVERYWHERE),
            ("t", EVERYWHERE),
            ("?", EVERYWHERE),
            ("q", EVERYWHERE),
            ("ctrl+p", "everywhere"),
            ("l", "Models"),
            ("u", "Models"),
            ("r", "Models"),
            ("esc", "Playground"),
            ("/", "Logs"),
            ("w", "Earnings"),
            ("g", "Earnings"),
            ("/", "Peers"),
            ("c", "Peers"),
            ("d", "Peers"),
            ("2", EVERYWHERE),
            ("c", "Jobs"),
            ("a", "Jobs"),
            ("x", "Jobs"),
            ("6", EVERYWHERE),
            ("v", "Proofs"),
        ):
            assert row in rows
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), "help closed")


async def test_logs_screen_filters_and_lists_operator_actions(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "the node")
        await pilot.press("t")
        await pilot.press("7")
        await wait_for(pilot, lambda: app.screen.query_one("#audit", DataTable), "the logs screen")
        logs = app.screen
        assert isinstance(logs, LogsScreen)
        assert logs.query_one("#audit", DataTable).row_count >= 1
        log = logs.query_one("#log", RichLog)
        await wait_for(pilot, lambda: len(log.lines) >= 1, "log lines")
        assert any("started" in strip.text for strip in log.lines)

        await pilot.press("slash")
        assert logs.query_one("#log-filter", Input).has_focus
        await pilot.press(*"zzz-nothing")
        assert len(log.lines) == 0
        await pilot.press("escape")
        assert any("started" in strip.text for strip in log.lines)

        await pilot.press("v", "v")
        assert logs.min_level == "error"
        assert not any("started" in strip.text for strip in log.lines)

        before = logs.audit_rows
        await pilot.press("t")
        await wait_for(pilot, lambda: logs.audit_rows == before + 1, "the new audit line")


async def test_quit_asks_says_what_runs_and_stops_the_node(
    node_for: NodeFactory, models_dir: Path, tmp_path: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "the node")
        await app.load_model(key(models_dir / "tiny-llama.gguf"))
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), "the quit dialog")
        dialog = app.screen
        assert isinstance(dialog, QuitScreen)
        assert dialog.work.loaded == ("tiny-llama-test",)
        assert "1 loaded model (tiny-llama-test) will be unloaded." in dialog.work.lines()
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dialog gone")
        assert node.state == "running"

        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), "the dialog again")
        await pilot.press("y")
        await wait_for(pilot, lambda: node.state == "stopped", "the node to stop")
    assert app.return_value == 0
    store = Store(tmp_path / "data" / "node.db")
    try:
        actions = [(action, outcome) for _, action, _, outcome in store.recent_audit()]
    finally:
        store.close()
    assert ("quit", "confirmed") in actions


async def test_demo_model_is_loaded_and_the_playground_ready(
    node_for: NodeFactory, models_dir: Path
) -> None:
    node = node_for()
    path = models_dir / "tiny-llama.gguf"
    app = FabstirApp(node, node.config, demo_model=str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PlaygroundScreen), "the playground")
        screen = app.screen
        assert isinstance(screen, PlaygroundScreen)
        assert screen.model_path == key(path)
        assert [m.path for m in node.loaded_models()] == [key(path)]
        await wait_for(
            pilot, lambda: screen.query_one("#prompt", Input).has_focus, "the prompt ready"
        )


async def fits(pilot: Pilot[object], screen: Screen[object], *selectors: str) -> None:
    """Wait for the layout, then every named widget must lie wholly inside the terminal."""

    def inside() -> bool:
        return all(on_screen(screen.query_one(s), screen.region) for s in selectors)

    await wait_for(pilot, inside, f"{', '.join(selectors)} laid out inside 80x24")


async def test_every_screen_fits_80_by_24(node_for: NodeFactory, models_dir: Path) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.size == (80, 24)
        await wait_for(pilot, lambda: app.screen.query(GpuPanel), "the GPU panel")
        dashboard = app.screen
        await fits(
            pilot, dashboard, "StatusHeader", "GpuPanel", "ModelPanel", "HostPanel", "Footer"
        )
        assert dashboard.query_one(GpuPanel).region.height >= 7

        await pilot.press("4")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), "models")
        await fits(pilot, app.screen, "#models-table", "#model-detail", "Footer", "StatusHeader")

        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PlaygroundScreen), "playground")
        await fits(
            pilot,
            app.screen,
            "#transcript",
            "#generation-stats",
            "#prompt",
            "#max-tokens",
            "#temperature",
            "Footer",
        )
        await pilot.press("escape")

        await pilot.press("7")
        await wait_for(pilot, lambda: isinstance(app.screen, LogsScreen), "logs")
        await fits(pilot, app.screen, "#log", "#audit", "#log-filter", "Footer")

        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await fits(pilot, app.screen, "#help-dialog")
        await pilot.press("escape", "q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), "quit dialog")
        await fits(pilot, app.screen, "#quit-dialog")
        await pilot.press("n")


async def test_no_color_filter_follows_the_theme(
    node_for: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greyscale (Monochrome) turns an ANSI theme's default colours into black on black, so
    the 16-colour theme needs NoColor; the truecolour themes keep Monochrome."""
    monkeypatch.setenv("NO_COLOR", "1")
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color

        def colour_filters() -> list[type]:
            return [type(f) for f in app._filters if isinstance(f, NoColor | Monochrome)]

        app.set_theme("fabstir-16")
        await pilot.pause()
        assert colour_filters() == [NoColor]
        app.set_theme("fabstir-dark")
        await pilot.pause()
        assert colour_filters() == [Monochrome]


def test_header_segments_shrink_to_fit_80_columns() -> None:
    def width(segments: list[Segment]) -> int:
        return sum(s.width for s in segments) + len(SEPARATOR) * (len(segments) - 1)

    node = Segment("node-1 running", lead="● ", keep=True)
    long = "x" * 40
    fitted = fit([node, Segment(long), Segment(long + "y"), Segment("H200 99% 54°C")], 80)
    assert width(fitted) <= 80
    assert fitted[0] == node, "the node's state is cut last"
    assert fitted[3].text == "H200 99% 54°C", "short segments keep their text"
    assert abs(fitted[1].width - fitted[2].width) <= 1, "the longest give way evenly"
    assert all(s.text.endswith("…") for s in fitted[1:3])

    huge = Segment("n" * 70 + " running", lead="● ", keep=True)
    fitted = fit([huge, Segment(long)], 80)
    assert width(fitted) <= 80, "even a kept segment gives way when it must"


async def test_quit_from_the_palette_still_asks(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        [quit_command] = [c for c in app.palette_commands() if c.title == "Quit"]
        app.call_later(quit_command.run)
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), "the quit dialog")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), "still running")
        assert node.state == "running"


async def test_sighup_stops_the_node_cleanly_and_leaves_a_trace(
    node_for: NodeFactory, models_dir: Path, tmp_path: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: node.state == "running", "the node")
        model = await app.load_model(key(models_dir / "tiny-llama.gguf"))
        assert model is not None
        # Only send it when our handler is in place: the default action would end pytest.
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGHUP)  # what an SSH drop sends to the terminal's process
        await wait_for(pilot, lambda: node.state == "stopped", "the node to stop")
        await wait_for(pilot, lambda: app.return_value is not None, "the app to exit")
    assert app.return_value == 0
    assert node.state == "stopped"
    assert not psutil.pid_exists(model.worker_pid) or (
        psutil.Process(model.worker_pid).status() == psutil.STATUS_ZOMBIE
    )
    store = Store(tmp_path / "data" / "node.db")
    try:
        actions = [action for _, action, _, _ in store.recent_audit()]
    finally:
        store.close()
    assert "terminal lost" in actions


async def test_dashboard_stays_live_beneath_the_help_dialog(node_for: NodeFactory) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(100, 30)) as pilot:
        dashboard = app.screen
        area = dashboard.query_one(GpuArea)
        await wait_for(pilot, lambda: 0 in area.panels and area.panels[0].samples >= 2, "samples")
        util = area.panels[0].query_one("#gpu-util", MetricRow)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        drawn = len(util.samples)
        # Still on screen behind the dialog: new readings keep being drawn.
        await wait_for(pilot, lambda: len(util.samples) >= drawn + 2, "drawing under the dialog")
        assert isinstance(app.screen, HelpScreen)
