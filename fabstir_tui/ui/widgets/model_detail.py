"""The pane under the models table: the selected file in full (path, hash, how it runs, errors)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fabstir_tui.engine.events import LoadedModel, ModelInfo
from fabstir_tui.ui import format as fmt


@dataclass(frozen=True, slots=True)
class RowState:
    """One model as the Models screen knows it: registry facts plus lifecycle state."""

    info: ModelInfo
    loaded: LoadedModel | None = None
    hash_fraction: float | None = None
    load: tuple[str, float] | None = None
    failure: tuple[str, str] | None = None  # (kind, reason)
    main_gpu: int = 0

    def state(self) -> tuple[str, str]:
        """The state cell's text and the theme variable that colours it ("" = muted)."""
        if self.load is not None:
            return f"load {self.load[1] * 100:.0f}%", "warning"
        if self.loaded is not None:
            return "loaded", "model-loaded"
        if self.failure is not None:
            return ("died" if self.failure[0] == "died" else "load fail"), "error"
        if self.info.error is not None:
            return "bad file", "error"
        return "not loaded", ""

    def error_text(self) -> str:
        if self.failure is not None:
            return self.failure[1]
        return self.info.error or ""

    def placement(self) -> str:
        """Where the loaded model runs: the build and, on a GPU build, which GPU (config)."""
        model = self.loaded
        if model is None:
            return ""
        if not model.gpu_offload:
            return "CPU build, all layers on CPU"
        return f"GPU build, {model.n_gpu_layers} layers on GPU{self.main_gpu} (inference.main_gpu)"


class ModelDetail(Widget):
    """A leaf; the screen hands it a new RowState and it repaints only if that differs."""

    DEFAULT_CLASSES = "panel"
    DEFAULT_CSS = """
    ModelDetail {
        height: auto;
    }
    """

    row: reactive[RowState | None] = reactive(None, layout=True)
    dirs: reactive[tuple[str, ...]] = reactive(tuple, layout=True)

    def on_mount(self) -> None:
        self.border_title = "Selected"

    def render(self) -> Content:
        row = self.row
        if row is None:
            where = ", ".join(self.dirs) or "(no models folder configured)"
            return Content.assemble(
                ("No GGUF models found in ", "$text-muted"),
                (where, "bold"),
                (". Add some and press r to rescan.", "$text-muted"),
            )
        info = row.info
        lines = [Content.styled(info.path, "bold")]
        if row.hash_fraction is not None:
            sha = Content.styled(f"hashing {row.hash_fraction * 100:.0f}%", "$text-muted")
        elif info.sha256:
            sha = Content(info.sha256)
        else:
            sha = Content.styled(
                "not hashed yet" if info.error is None else fmt.DASH, "$text-muted"
            )
        lines.append(Content.assemble(("sha256 ", "$text-muted"), sha))
        if row.load is not None:
            stage, fraction = row.load
            lines.append(Content.styled(f"loading: {stage} ({fraction * 100:.0f}%)", "$warning"))
        if row.loaded is not None:
            model = row.loaded
            lines.append(
                Content.assemble(
                    ("loaded", "bold $model-loaded"),
                    f" · pid {model.worker_pid} · ctx {model.n_ctx} · {model.n_threads} threads"
                    f" · {row.placement()}",
                )
            )
        error = row.error_text()
        if error:
            lines.append(Content.styled(error, "$error"))
        return Content("\n").join(lines)
