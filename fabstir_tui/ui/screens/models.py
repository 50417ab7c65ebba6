"""Models (key 4): every GGUF the registry found, its hash and load state; load, unload, prompt."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import var
from textual.theme import Theme
from textual.widgets import DataTable, Footer
from textual.widgets.data_table import CellDoesNotExist

from fabstir_tui.engine import events as ev
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.ui import format as fmt
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.styling import DIM, theme_style
from fabstir_tui.ui.widgets.model_detail import ModelDetail, RowState
from fabstir_tui.ui.widgets.status_header import StatusHeader

# Fixed widths (update_cell never widens a column); the first eight fit 80 columns.
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("name", "name", 15),
    ("state", "state", 10),
    ("quant", "quant", 6),
    ("params", "params", 6),
    ("ctx", "ctx", 5),
    ("size", "size", 8),
    ("chat", "chat", 4),
    ("sha256", "sha256", 8),
    ("arch", "arch", 8),
    ("error", "error", 60),
)


class ModelsScreen(LiveScreen):
    """Owns the feed for registry and model-lifecycle events; updates only the changed cells."""

    FEED_EVENTS: ClassVar[tuple[type[ev.Event], ...]] = (
        ev.ModelsScanned,
        ev.ModelHashProgress,
        ev.ModelHashed,
        ev.ModelLoadProgress,
    )
    BINDINGS = [
        Binding("l", "load", "Load"),
        Binding("u", "unload", "Unload"),
        Binding("r", "rescan", "Rescan"),
        Binding("enter", "playground", "Playground"),
    ]

    models: var[dict[str, ev.ModelInfo]] = var(dict)
    hash_progress: var[dict[str, float]] = var(dict)
    load_progress: var[dict[str, tuple[str, float]]] = var(dict)
    failures: var[dict[str, tuple[str, str]]] = var(dict)  # path -> (kind, reason)

    def __init__(self, node: Node, *, id: str | None = None) -> None:
        super().__init__(node, id=id)
        self._cells: dict[str, dict[str, Text]] = {}
        self._told_errors: set[tuple[str, str]] = set()

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        table: DataTable[Text] = DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, width=width, key=key)
        yield table
        yield ModelDetail(id="model-detail")
        yield Footer(compact=True)

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#models-table", DataTable)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        self.models = {m.path: m for m in snapshot.models}
        self.app.theme_changed_signal.subscribe(self, self._theme_changed)
        self.table.focus()
        self._tell_bad_files()

    # --- drawing --------------------------------------------------------------------------

    def row_state(self, path: str) -> RowState:
        """Everything known about one row, for its cells and the detail pane."""
        loaded = next((m for m in self.loaded if m.path == path), None)
        return RowState(
            info=self.models[path],
            loaded=loaded,
            hash_fraction=self.hash_progress.get(path),
            load=self.load_progress.get(path),
            failure=self.failures.get(path),
            main_gpu=self.node.config.inference.main_gpu,
        )

    def _cells_for(self, row: RowState) -> dict[str, Text]:
        info = row.info
        state_text, state_var = row.state()
        state_style = theme_style(self.app, state_var) if state_var else DIM
        if row.hash_fraction is not None:
            sha = Text(f"hash {row.hash_fraction * 100:.0f}%", style=DIM)
        elif info.sha256:
            sha = Text(fmt.short_hash(info.sha256))
        else:
            sha = Text("queued" if info.error is None else fmt.DASH, style=DIM)
        error = row.error_text()
        return {
            "name": Text(info.name or Path(info.path).name),
            "state": Text(state_text, style=state_style),
            "quant": Text(info.quantisation or fmt.DASH),
            "params": Text(fmt.parameters(info.parameters), justify="right"),
            "ctx": Text(fmt.context(info.context_length), justify="right"),
            "size": Text(fmt.size_bytes(info.size_bytes), justify="right"),
            "chat": Text("✓" if info.has_chat_template else "", justify="center"),
            "sha256": sha,
            "arch": Text(info.architecture or fmt.DASH),
            "error": Text(error, style=theme_style(self.app, "error")) if error else Text(""),
        }

    def draw_rows(self, *, force: bool = False) -> None:
        """Add, remove and update rows; a cell is written only when its text or style changed."""
        table = self.table
        for path in [p for p in self._cells if p not in self.models]:
            table.remove_row(path)
            del self._cells[path]
        for path in self.models:
            self._draw_row(path, force=force)
        self._draw_detail()

    def _draw_row(self, path: str, *, force: bool = False) -> None:
        if path not in self.models:
            return
        table = self.table
        cells = self._cells_for(self.row_state(path))
        old = self._cells.get(path)
        if old is None:
            table.add_row(*(cells[key] for _, key, _ in COLUMNS), key=path)
        else:
            for key, cell in cells.items():
                if force or old.get(key) != cell:
                    table.update_cell(path, key, cell)
        self._cells[path] = cells

    def _draw_detail(self) -> None:
        path = self.selected_path()
        detail = self.query_one(ModelDetail)
        detail.dirs = tuple(str(d) for d in self.node.config.paths.models_dirs)
        detail.row = self.row_state(path) if path is not None else None

    def models_changed(self) -> None:
        super().models_changed()
        self.draw_rows()

    def _theme_changed(self, theme: Theme) -> None:
        self.draw_rows(force=True)

    def _tell_bad_files(self) -> None:
        for info in self.models.values():
            if info.error is not None and (info.path, info.error) not in self._told_errors:
                self._told_errors.add((info.path, info.error))
                self.notify(
                    info.error,
                    title=f"{Path(info.path).name} cannot be used",
                    severity="warning",
                    timeout=10,
                    markup=False,
                )

    # --- selection and keys ---------------------------------------------------------------

    def selected_path(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return str(row_key.value) if row_key.value is not None else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._draw_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_playground()

    def _selected_or_tell(self) -> str | None:
        path = self.selected_path()
        if path is None:
            self.notify("No model selected: put GGUF files in a models folder and press r.")
        return path

    def action_load(self) -> None:
        path = self._selected_or_tell()
        if path is None:
            return
        if path in self.load_progress:
            self.notify(f"{Path(path).name} is already loading.", markup=False)
            return
        self.run_worker(self.fabstir.load_model(path), group="operator", exit_on_error=False)

    def action_unload(self) -> None:
        path = self._selected_or_tell()
        if path is not None:
            self.run_worker(self.fabstir.unload_model(path), group="operator", exit_on_error=False)

    def action_rescan(self) -> None:
        self.run_worker(
            self.fabstir.rescan_models(), group="rescan", exclusive=True, exit_on_error=False
        )

    def action_playground(self) -> None:
        path = self._selected_or_tell()
        if path is not None:
            self.run_worker(
                self.fabstir.open_playground(path), group="operator", exit_on_error=False
            )

    # --- feed handlers --------------------------------------------------------------------

    def on_engine_models_scanned(self, message: msg.ModelsScanned) -> None:
        self.models = {m.path: m for m in message.event.models}
        self.hash_progress = {p: f for p, f in self.hash_progress.items() if p in self.models}
        self.draw_rows()
        self._tell_bad_files()

    def on_engine_model_hash_progress(self, message: msg.ModelHashProgress) -> None:
        event = message.event
        if event.total_bytes > 0 and event.done_bytes < event.total_bytes:
            self.hash_progress[event.path] = event.done_bytes / event.total_bytes
            self._draw_row(event.path)

    def on_engine_model_hashed(self, message: msg.ModelHashed) -> None:
        event = message.event
        self.hash_progress.pop(event.path, None)
        info = self.models.get(event.path)
        if info is not None:
            self.models[event.path] = dataclasses.replace(info, sha256=event.sha256)
            self._draw_row(event.path)
            self._draw_detail()

    def on_engine_model_load_progress(self, message: msg.ModelLoadProgress) -> None:
        event = message.event
        if event.fraction < 1.0:
            self.load_progress[event.path] = (event.stage, event.fraction)
        else:
            self.load_progress.pop(event.path, None)
        self.failures.pop(event.path, None)
        self._draw_row(event.path)
        self._draw_detail()

    def on_engine_model_loaded(self, message: msg.ModelLoaded) -> None:
        self.load_progress.pop(message.event.model.path, None)
        self.failures.pop(message.event.model.path, None)

    def on_engine_model_load_failed(self, message: msg.ModelLoadFailed) -> None:
        self.load_progress.pop(message.event.path, None)
        self.failures[message.event.path] = ("load failed", message.event.reason)
        self._draw_row(message.event.path)
        self._draw_detail()

    def on_engine_model_worker_died(self, message: msg.ModelWorkerDied) -> None:
        self.failures[message.event.path] = ("died", message.event.reason)
