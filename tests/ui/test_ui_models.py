"""Models screen over a real node: load, unload, rescan, bad files, worker events."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gguf_factory import copy_model, write_not_gguf
from textual.pilot import Pilot
from ui_helpers import key, wait_for

from fabstir_tui.engine.events import ModelInfo
from fabstir_tui.engine.node import Node
from fabstir_tui.ui.app import FabstirApp
from fabstir_tui.ui.screens.models import COLUMNS, ModelsScreen
from fabstir_tui.ui.widgets.model_detail import RowState

NodeFactory = Callable[..., Node]


async def open_models(pilot: Pilot[object], rows: int = 1) -> ModelsScreen:
    await pilot.press("4")
    app = pilot.app
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, ModelsScreen) and app.screen.table.row_count >= rows,
        f"the models screen with {rows} row(s)",
    )
    screen = app.screen
    assert isinstance(screen, ModelsScreen)
    return screen


def cell(screen: ModelsScreen, path: str, column: str) -> str:
    return str(screen.table.get_cell(path, column).plain)


def select(screen: ModelsScreen, path: str) -> None:
    screen.table.move_cursor(row=screen.table.get_row_index(path))


async def test_l_loads_the_selected_model_and_u_unloads_it(
    node_for: NodeFactory, models_dir: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    path = key(models_dir / "tiny-llama.gguf")
    async with app.run_test(size=(120, 30)) as pilot:
        models = await open_models(pilot)
        select(models, path)
        assert cell(models, path, "state") == "not loaded"
        await pilot.press("l")
        await wait_for(
            pilot, lambda: cell(models, path, "state") == "loaded", "the row to say loaded"
        )
        assert [m.path for m in node.loaded_models()] == [path]
        assert any(
            a.action == "load model" and a.outcome.startswith("loaded") for a in node.recent_audit()
        )

        await pilot.press("u")
        await wait_for(pilot, lambda: cell(models, path, "state") == "not loaded", "unloaded row")
        assert node.loaded_models() == []
        assert any(a.action == "unload model" for a in node.recent_audit())


async def test_load_progress_reaches_the_screen_that_shows_it(
    node_for: NodeFactory, models_dir: Path
) -> None:
    node = node_for()
    seen: list[str] = []
    app = FabstirApp(node, node.config)
    path = key(models_dir / "tiny-llama.gguf")

    def hook(message: object) -> None:
        seen.append(type(message).__name__)

    async with app.run_test(size=(120, 30), message_hook=hook) as pilot:
        models = await open_models(pilot)
        select(models, path)
        await pilot.press("l")
        await wait_for(pilot, lambda: cell(models, path, "state") == "loaded", "the load")
    assert "ModelLoadProgress" in seen
    assert "ModelLoaded" in seen


def test_row_state_words() -> None:
    info = ModelInfo(path="/m/a.gguf", name="a", size_bytes=1, mtime_ns=1)
    assert RowState(info, load=("loading weights", 0.35)).state() == ("load 35%", "warning")
    assert RowState(info).state() == ("not loaded", "")
    assert RowState(info, failure=("died", "killed")).state() == ("died", "error")
    bad = ModelInfo(path="/m/b.gguf", name="b", size_bytes=1, mtime_ns=1, error="not a GGUF")
    assert RowState(bad).state() == ("bad file", "error")
    assert RowState(bad).error_text() == "not a GGUF"


def test_the_first_eight_columns_fit_80_columns() -> None:
    cell_padding = 2  # DataTable's default padding, one cell each side
    width = sum(w + cell_padding for _, _, w in COLUMNS[:8])
    assert width <= 80
    assert [k for _, k, _ in COLUMNS[:2]] == ["name", "state"]


async def test_bad_file_shows_in_the_row_and_as_a_notification(
    node_for: NodeFactory, models_dir: Path
) -> None:
    bad = write_not_gguf(models_dir / "broken.gguf")
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(120, 30)) as pilot:
        models = await open_models(pilot, rows=2)
        assert cell(models, key(bad), "state") == "bad file"
        assert "not a GGUF" in cell(models, key(bad), "error")
        notes = [n for n in app._notifications if "broken.gguf" in (n.title or "")]
        assert notes and notes[0].severity == "warning"

        select(models, key(bad))
        await pilot.press("l")
        await wait_for(pilot, lambda: cell(models, key(bad), "state") == "load fail", "load fail")
        failed = [n for n in app._notifications if n.title == "broken.gguf failed to load"]
        assert len(failed) == 1, "one notification per failure, not one per screen"


async def test_r_rescans_and_finds_a_new_file(
    node_for: NodeFactory, models_dir: Path, tiny_gguf: Path
) -> None:
    node = node_for()
    app = FabstirApp(node, node.config)
    async with app.run_test(size=(120, 30)) as pilot:
        models = await open_models(pilot)
        added = copy_model(tiny_gguf, models_dir / "second.gguf")
        await pilot.press("r")
        await wait_for(pilot, lambda: models.table.row_count == 2, "the new row")
        await wait_for(
            pilot, lambda: len(cell(models, key(added), "sha256")) == 8, "the new file hashed"
        )
        assert cell(models, key(added), "sha256") == cell(
            models, key(models_dir / "tiny-llama.gguf"), "sha256"
        )
        assert any(a.action == "rescan models" for a in node.recent_audit())


async def test_enter_loads_then_opens_the_playground(
    node_for: NodeFactory, models_dir: Path
) -> None:
    from fabstir_tui.ui.screens.playground import PlaygroundScreen

    node = node_for()
    app = FabstirApp(node, node.config)
    path = key(models_dir / "tiny-llama.gguf")
    async with app.run_test(size=(120, 30)) as pilot:
        models = await open_models(pilot)
        select(models, path)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PlaygroundScreen), "the playground")
        assert isinstance(app.screen, PlaygroundScreen)
        assert app.screen.model_path == path
        assert [m.path for m in node.loaded_models()] == [path]
