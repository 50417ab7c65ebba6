"""The prompt playground: chat with a loaded model and watch TTFT and tokens/s as it streams."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.validation import Integer, Number
from textual.widgets import Footer, Input, Label, Static

from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError, TokenStream
from fabstir_tui.engine.node import Node, NodeSnapshot
from fabstir_tui.ui.screens.base import LiveScreen
from fabstir_tui.ui.widgets.generation_stats import GenerationStats
from fabstir_tui.ui.widgets.status_header import StatusHeader

MAX_TEMPERATURE = 2.0
DRAW_HZ = 30
_pending_cancels: set[asyncio.Task[None]] = set()


class PlaygroundScreen(LiveScreen):
    """Owns its generation worker; escape cancels a running generation, a second one closes."""

    BINDINGS = [
        Binding("escape", "cancel_or_close", "Cancel / close"),
        Binding("ctrl+l", "clear_chat", "Clear chat"),
    ]

    def __init__(self, node: Node, model_path: str) -> None:
        super().__init__(node)
        self.model_path = model_path
        self.model_name = Path(model_path).name
        self.stream: TokenStream | None = None
        self.turns: list[dict[str, str]] = []
        self.outcomes: list[str] = []  # finish reason or "failed", one per generation
        self._cancel_requested = False
        self._busy = False  # set on submit, before the worker runs, so enter twice is one run

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield Label(f"Playground · {self.model_name}", id="playground-title")
        yield VerticalScroll(id="transcript")
        yield GenerationStats(id="generation-stats")
        with Horizontal(id="prompt-row"):
            yield Input(placeholder="Prompt (enter sends)", id="prompt")
            yield Input(
                str(self.node.config.inference.max_tokens_default),
                type="integer",
                validators=[Integer(minimum=1)],
                id="max-tokens",
            )
            yield Input(
                "0.7",
                type="number",
                validators=[Number(minimum=0.0, maximum=MAX_TEMPERATURE)],
                id="temperature",
            )
        yield Footer(compact=True)

    def live_mount(self, snapshot: NodeSnapshot) -> None:
        self.query_one("#max-tokens", Input).border_title = "max tokens"
        self.query_one("#temperature", Input).border_title = "temp"
        model = next((m for m in snapshot.loaded if m.path == self.model_path), None)
        intro = f"{self.model_name} — type a prompt and press enter."
        if model is not None:
            template = model.chat_format or "none (raw prompt)"
            intro = (
                f"{model.name} · ctx {model.n_ctx} · chat template {template}. "
                "Type a prompt and press enter; escape cancels."
            )
        self._add_turn(intro, "note")
        self.query_one("#prompt", Input).focus()

    @property
    def generating(self) -> bool:
        return self._busy

    def _add_turn(self, text: str, kind: str) -> Static:
        turn = Static(Text(text), classes=f"turn {kind}")
        self.query_one("#transcript", VerticalScroll).mount(turn)
        return turn

    # --- submitting -----------------------------------------------------------------------

    @on(Input.Submitted)
    def submit_prompt(self, event: Input.Submitted) -> None:
        """Enter in any field of the prompt row sends the prompt with the settings shown."""
        field = self.query_one("#prompt", Input)
        prompt = field.value.strip()
        if not prompt:
            field.focus()
            return
        if self.generating:
            self.notify("A generation is running; escape cancels it.")
            return
        settings = self._settings()
        if settings is None:
            return
        field.value = ""
        field.focus()
        self._busy = True
        self.run_worker(
            self._generate(prompt, *settings),
            name="generation",
            group="generation",
            exclusive=True,
            exit_on_error=False,
        )

    def _settings(self) -> tuple[int, float] | None:
        max_tokens = self.query_one("#max-tokens", Input)
        temperature = self.query_one("#temperature", Input)
        for field in (max_tokens, temperature):
            result = field.validate(field.value)
            if result is not None and not result.is_valid:
                label = field.border_title or "value"
                self.notify(f"{label}: {'; '.join(result.failure_descriptions)}", markup=False)
                return None
        return int(max_tokens.value), float(temperature.value)

    async def _generate(self, prompt: str, max_tokens: int, temperature: float) -> None:
        try:
            await self._run_generation(prompt, max_tokens, temperature)
        finally:
            self._busy = False

    async def _run_generation(self, prompt: str, max_tokens: int, temperature: float) -> None:
        transcript = self.query_one("#transcript", VerticalScroll)
        stats = self.query_one(GenerationStats)
        self._add_turn(prompt, "user")
        reply = self._add_turn("", "assistant")
        messages = (*self.turns, {"role": "user", "content": prompt})
        detail = f"{self.model_name} max_tokens={max_tokens} temperature={temperature:g}"
        request = GenerationRequest(
            messages=tuple(messages), max_tokens=max_tokens, temperature=temperature
        )
        started = time.perf_counter()
        try:
            stream = self.node.generate(self.model_path, request)
        except InferenceError as exc:
            self._failed(reply, stats, detail, exc)
            return
        self.stream, self._cancel_requested = stream, False
        self.fabstir.in_flight[stream.request_id] = self.model_name
        stats.status, stats.live, stats.prompt_tokens = "waiting", True, None
        stats.ttft_s, stats.tokens_per_s, stats.completion_tokens = None, None, 0
        text, pieces, first, drawn_at = "", 0, 0.0, 0.0

        def draw(now: float) -> None:
            reply.update(Text(text))
            stats.completion_tokens = pieces
            if pieces > 1 and now > first:
                stats.tokens_per_s = (pieces - 1) / (now - first)
            transcript.scroll_end(animate=False)

        try:
            async for piece in stream:
                now = time.perf_counter()
                if pieces == 0:
                    first = now
                    stats.ttft_s = now - started
                    stats.status = "streaming"
                pieces += 1
                text += piece
                # A fast model outruns the screen: draw at most DRAW_HZ times a second and
                # give the loop back each time, so keys (escape) are handled mid-stream.
                if pieces == 1 or now - drawn_at >= 1.0 / DRAW_HZ:
                    draw(now)
                    drawn_at = now
                    await asyncio.sleep(0)
            draw(time.perf_counter())
        except InferenceError as exc:
            draw(time.perf_counter())
            self._failed(reply, stats, detail, exc)
            return
        except asyncio.CancelledError:
            # The screen is going away mid-stream: stop the model instead of leaving it running.
            task = asyncio.get_running_loop().create_task(stream.cancel())
            _pending_cancels.add(task)
            task.add_done_callback(_pending_cancels.discard)
            raise
        finally:
            self.stream = None
            self.fabstir.in_flight.pop(stream.request_id, None)
        final = stream.stats
        stats.live = False
        stats.status = (
            "cancelled" if final.finish_reason == "cancelled" else f"done ({final.finish_reason})"
        )
        stats.ttft_s, stats.tokens_per_s = final.ttft_s, final.tokens_per_s
        stats.completion_tokens, stats.prompt_tokens = final.completion_tokens, final.prompt_tokens
        self.turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        self.outcomes.append(final.finish_reason)
        self.node.record_action(
            "generate", detail, f"{final.finish_reason}, {final.completion_tokens} tokens"
        )

    def _failed(
        self, reply: Static, stats: GenerationStats, detail: str, exc: InferenceError
    ) -> None:
        """Say what went wrong in words, in the transcript; the app and the screen carry on."""
        message = Text(f"Generation failed: {exc}")
        if str(reply.content):
            self._add_turn(message.plain, "error")  # keep the partial reply above it
        else:
            reply.set_classes("turn error")
            reply.update(message)
        stats.live = False
        stats.status = "failed"
        self.outcomes.append("failed")
        self.node.record_action("generate", detail, f"failed: {exc}")

    # --- keys -----------------------------------------------------------------------------

    async def action_cancel_or_close(self) -> None:
        stream = self.stream
        if stream is not None and not self._cancel_requested:
            self._cancel_requested = True
            self.query_one(GenerationStats).status = "cancelling"
            await stream.cancel()
            self.node.record_action("cancel generation", self.model_name, "requested")
            return
        self.dismiss()

    def action_clear_chat(self) -> None:
        if self.generating:
            self.notify("A generation is running; escape cancels it first.")
            return
        self.turns.clear()
        self.query_one("#transcript", VerticalScroll).remove_children(
            ".turn.user, .turn.assistant, .turn.error"
        )
        self.query_one(GenerationStats).status = "idle"
