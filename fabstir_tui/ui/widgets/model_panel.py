"""The loaded model(s): how each runs (context, threads, build, GPU layers) and how fast."""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fabstir_tui.engine.events import LoadedModel
from fabstir_tui.ui import format as fmt


@dataclass(frozen=True, slots=True)
class RunFigures:
    """The last finished generation on a model, as the engine measured it."""

    tokens_per_s: float | None
    ttft_s: float | None
    completion_tokens: int
    finish_reason: str


def build_text(model: LoadedModel) -> str:
    """Say which llama.cpp build runs the model and where its layers are."""
    if not model.gpu_offload:
        return "CPU build · all layers on CPU"
    return f"GPU build · {model.n_gpu_layers} layers on GPU"


class ModelPanel(Widget):
    """A leaf over immutable tuples, so an unchanged state never repaints."""

    DEFAULT_CLASSES = "panel"
    DEFAULT_CSS = """
    ModelPanel {
        height: auto;
    }
    """

    loaded: reactive[tuple[LoadedModel, ...]] = reactive(tuple, layout=True)
    last_runs: reactive[tuple[tuple[str, RunFigures], ...]] = reactive(tuple, layout=True)
    generating: reactive[frozenset[str]] = reactive(frozenset)

    def on_mount(self) -> None:
        self.border_title = "Model"

    def render(self) -> Content:
        if not self.loaded:
            return Content.assemble(
                ("No model loaded.\n", "bold"),
                ("Press 4 for Models, pick one, press l to load it.", "$text-muted"),
            )
        runs = dict(self.last_runs)
        parts: list[Content] = []
        for model in self.loaded:
            parts.append(self._model_lines(model, runs.get(model.path)))
        return Content("\n").join(parts)

    def _model_lines(self, model: LoadedModel, run: RunFigures | None) -> Content:
        state = ("generating", "bold $accent") if model.path in self.generating else ("ready", "")
        lines = [
            Content.assemble((model.name, "bold $model-loaded"), "  ", state),
            Content.assemble(
                ("ctx ", "$text-muted"),
                fmt.context(model.n_ctx),
                ("  threads ", "$text-muted"),
                str(model.n_threads),
                ("  pid ", "$text-muted"),
                str(model.worker_pid),
            ),
            Content(build_text(model)),
        ]
        if run is None:
            lines.append(Content.styled("no generation yet", "$text-muted"))
        else:
            lines.append(
                Content.assemble(
                    ("last ", "$text-muted"),
                    (fmt.rate(run.tokens_per_s), "bold"),
                    ("  TTFT ", "$text-muted"),
                    (fmt.seconds(run.ttft_s), "bold"),
                    ("  ", ""),
                    f"{run.completion_tokens} tok",
                )
            )
        return Content("\n").join(lines)
