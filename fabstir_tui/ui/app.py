"""The Textual app around a Node handed in from outside: screens, keys, themes, operator commands.

The app never owns engine state. It starts the node it is given (unless told not to), routes
operator commands to `Node` methods (each leaves an audit line), and stops the node on exit.
Live data reaches screens only through each screen's own feed (`ui/bridge.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.filter import LineFilter, Monochrome, NoColor
from textual.screen import ModalScreen
from textual.worker import Worker

from fabstir_tui.config import Config
from fabstir_tui.engine.chain.actions import ChainAction
from fabstir_tui.engine.chain.events import ChainStatus
from fabstir_tui.engine.events import LoadedModel, ModelLoadFailed, ModelWorkerDied
from fabstir_tui.engine.inference.registry import model_key
from fabstir_tui.engine.inference.stream import InferenceError
from fabstir_tui.engine.node import Node
from fabstir_tui.ui import chain_flows
from fabstir_tui.ui.commands import FabstirCommands, PaletteCommand
from fabstir_tui.ui.screens.base import report_worker_failure
from fabstir_tui.ui.screens.dashboard import DashboardScreen
from fabstir_tui.ui.screens.earnings import EarningsScreen
from fabstir_tui.ui.screens.help import HelpScreen, KeyRow
from fabstir_tui.ui.screens.jobs import JobsScreen
from fabstir_tui.ui.screens.logs import LogsScreen
from fabstir_tui.ui.screens.models import ModelsScreen
from fabstir_tui.ui.screens.peers import PeersScreen
from fabstir_tui.ui.screens.playground import PlaygroundScreen
from fabstir_tui.ui.screens.proofs import ProofsScreen
from fabstir_tui.ui.screens.quit_confirm import QuitScreen, RunningWork
from fabstir_tui.ui.themes import DEFAULT_THEME, domain_defaults, load_themes, user_theme_dir

HANGUP_EXIT_GRACE_S = 10.0
# The Playground's inputs take printable keys: these work there after `escape`.
EVERYWHERE = "all screens (Playground: escape first)"
SCREENS_BY_KEY = {
    "dashboard": "Dashboard",
    "jobs": "Jobs",
    "peers": "Peers",
    "models": "Models",
    "earnings": "Earnings",
    "proofs": "Proofs",
    "logs": "Logs",
}
# Actions that make no sense while a dialog (help, quit, palette) is on top.
_BLOCKED_UNDER_MODAL = frozenset({"show", "cycle_theme", "help", "quit"})


class FabstirApp(App[int]):
    """The operator's terminal over one node (DESIGN §8)."""

    CSS_PATH = "styles/app.tcss"
    TITLE = "fabstir-tui"
    COMMANDS = {FabstirCommands}
    BINDINGS = [
        Binding("1", "show('dashboard')", "Dash", tooltip="Dashboard"),
        Binding("2", "show('jobs')", "Jobs"),
        Binding("3", "show('peers')", "Peers"),
        Binding("4", "show('models')", "Models"),
        Binding("5", "show('earnings')", "Earn", tooltip="Earnings"),
        Binding("6", "show('proofs')", "Proofs"),
        Binding("7", "show('logs')", "Logs"),
        Binding("t", "cycle_theme", "Theme", show=False),  # in help; the footer needs room
        Binding("question_mark", "help", "Keys"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        node: Node,
        config: Config,
        *,
        start_node: bool = True,
        demo_model: str | None = None,
        after_start: Callable[[Node], Awaitable[None]] | None = None,
        before_stop: Callable[[Node], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.node = node
        self.config = config
        self._start_node = start_node
        self._demo_model = demo_model
        self._after_start = after_start  # the demo: replay devnet set-up, unlock its key
        self._before_stop = before_stop  # the demo: stop its simulated clients first
        self.in_flight: dict[str, str] = {}  # request id -> model name, kept by the playground
        self._announced: deque[ModelLoadFailed | ModelWorkerDied] = deque(maxlen=64)
        self._notified: deque[tuple[str, str]] = deque(maxlen=32)
        self._quitting = False
        self._exit_code = 0
        self.themes = load_themes(user_theme_dir())
        for theme in self.themes.themes:
            self.register_theme(theme)
        self._theme_problem = self._pick_start_theme(config.ui.theme)
        self.add_mode("dashboard", partial(DashboardScreen, node))
        self.add_mode("jobs", partial(JobsScreen, node))
        self.add_mode("peers", partial(PeersScreen, node))
        self.add_mode("models", partial(ModelsScreen, node))
        self.add_mode("earnings", partial(EarningsScreen, node))
        self.add_mode("proofs", partial(ProofsScreen, node))
        self.add_mode("logs", partial(LogsScreen, node))

    # --- themes ---------------------------------------------------------------------------

    def _pick_start_theme(self, name: str) -> str | None:
        if name in self.available_themes:
            self.theme = name
            return None
        fallback = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = fallback
        known = ", ".join(self.themes.names)
        return f"Theme {name!r} is not installed; using {fallback}. Installed: {known}."

    def watch_theme(self, theme_name: str) -> None:
        """Under NO_COLOR pick the filter for *this* theme: Textual chose once at start-up, and
        its greyscale filter maps an ANSI theme's default colours to black on black."""
        if not self.no_color:
            return
        wanted: LineFilter = NoColor() if self.native_ansi_color else Monochrome()
        self._filters = [
            wanted if isinstance(f, NoColor | Monochrome) else f for f in self._filters
        ]

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return domain_defaults(self.current_theme)

    def set_theme(self, name: str) -> None:
        """Switch theme at run time; an operator action, so it is audited."""
        old = self.theme
        if name == old:
            return
        self.theme = name
        self.node.record_action("switch theme", f"{old} -> {name}", "applied")

    def action_cycle_theme(self) -> None:
        names = self.themes.names
        if not names:
            return
        index = names.index(self.theme) + 1 if self.theme in names else 0
        self.set_theme(names[index % len(names)])

    # --- lifecycle ------------------------------------------------------------------------

    def on_mount(self) -> None:
        for problem in self.themes.problems:
            self.notify(problem, title="Theme file skipped", severity="warning", markup=False)
        if self._theme_problem:
            self.notify(self._theme_problem, title="Theme", severity="warning", markup=False)
        self.switch_mode("dashboard")
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.terminal_lost)
        self.run_worker(self._bring_up(), name="node-start", group="node", exit_on_error=False)

    def terminal_lost(self) -> None:
        """An SSH drop (SIGHUP): stop the node cleanly and leave a trace, not a torn store."""
        if self._quitting:
            return
        self._quitting = True
        self.node.log("warning", "node", "the terminal hung up (SIGHUP): stopping the node")
        self.node.record_action("terminal lost", "SIGHUP", "stopping the node")
        self.run_worker(self._shut_down(hung_up=True), name="hangup", exit_on_error=False)

    async def _bring_up(self) -> None:
        if self._start_node:
            try:
                await self.node.start()
            except Exception as exc:  # show why, keep the screen up for the logs
                self._exit_code = 1  # DESIGN §10: the operation failed
                self.notify(
                    f"The node could not start: {exc}",
                    title="Node",
                    severity="error",
                    timeout=60,
                    markup=False,
                )
                return
        if self._after_start is not None:
            await self._after_start(self.node)
        if self._demo_model is not None:
            await self.open_playground(self._demo_model)

    async def on_unmount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self._stop_node()  # idempotent; the normal path stopped it before exit

    async def _stop_node(self) -> None:
        """Run the before-stop hook once (never a second time), then stop the node."""
        hook, self._before_stop = self._before_stop, None
        if hook is not None:
            try:
                await hook(self.node)
            except Exception as exc:  # the node must stop whatever the hook did
                self.node.log("error", "node", f"before stopping: {exc}")
        await self.node.stop()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_failure(self.node, self, event)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in _BLOCKED_UNDER_MODAL and isinstance(self.screen, ModalScreen))

    # --- navigation -----------------------------------------------------------------------

    async def action_show(self, mode: str) -> None:
        await self.switch_mode(mode)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_rows()))

    def key_rows(self) -> list[KeyRow]:
        """Every key, generated from the bindings themselves so help cannot go stale."""
        rows = [
            KeyRow(self.get_key_display(b), b.description, EVERYWHERE)
            for b in self.BINDINGS
            if isinstance(b, Binding)
        ]
        rows.insert(-1, KeyRow("ctrl+p", "Command palette (every action)", "everywhere"))
        for screen, where in (
            (JobsScreen, "Jobs"),
            (PeersScreen, "Peers"),
            (ModelsScreen, "Models"),
            (PlaygroundScreen, "Playground"),
            (EarningsScreen, "Earnings"),
            (ProofsScreen, "Proofs"),
            (LogsScreen, "Logs"),
        ):
            for binding in screen.BINDINGS:
                if isinstance(binding, Binding):
                    rows.append(KeyRow(self.get_key_display(binding), binding.description, where))
        return rows

    # --- operator commands (each ends in a Node call that leaves an audit line) -------------

    async def load_model(self, path: str) -> LoadedModel | None:
        """Load through the node; a failure is told once, here or from the engine's event."""
        try:
            return await self.node.load_model(path)
        except InferenceError as exc:
            self._notified.append((model_key(path), str(exc)))
            self._notify_failure(f"{Path(path).name} failed to load", str(exc))
            return None

    async def unload_model(self, path: str) -> bool:
        try:
            await self.node.unload_model(path)
        except InferenceError as exc:
            self._notify_failure(f"{Path(path).name} was not unloaded", str(exc))
            return False
        return True

    async def rescan_models(self) -> None:
        dirs = ", ".join(str(d) for d in self.config.paths.models_dirs)
        try:
            models = await self.node.scan_models()
        except Exception as exc:
            self.node.record_action("rescan models", dirs, f"failed: {exc}")
            self._notify_failure("Rescan failed", str(exc))
            return
        self.node.record_action("rescan models", dirs, f"{len(models)} found")

    async def open_playground(self, path: str) -> None:
        """The prompt playground on `path`, loading the model first when it is not loaded."""
        key = model_key(path)
        open_now = self._open_playground()
        if open_now is not None and open_now.model_path != key and open_now.generating:
            self.notify(
                f"A generation is running on {open_now.model_name}; cancel it first (escape).",
                markup=False,
            )
            return
        loaded = any(m.path == key for m in self.node.loaded_models())
        if not loaded and await self.load_model(key) is None:
            return
        await self.switch_mode("models")
        top = self.screen
        if isinstance(top, PlaygroundScreen):
            if top.model_path == key:
                return
            await self.pop_screen()
        await self.push_screen(PlaygroundScreen(self.node, key))

    def _open_playground(self) -> PlaygroundScreen | None:
        try:
            stack = self.get_screen_stack("models")
        except KeyError:  # the Models mode has not been opened yet
            return None
        top = stack[-1] if stack else None
        return top if isinstance(top, PlaygroundScreen) else None

    async def run_chain_actions(self, actions: list[ChainAction]) -> bool:
        return await chain_flows.run_chain_actions(self, actions)

    async def open_registration(self, status: ChainStatus | None) -> None:
        await chain_flows.open_registration(self, status)

    async def ask_passphrase(self) -> None:
        await chain_flows.ask_passphrase(self)

    def announce_failure(self, event: ModelLoadFailed | ModelWorkerDied) -> None:
        """Notify once per engine failure, however many screens received the event."""
        if any(seen is event for seen in self._announced):
            return
        self._announced.append(event)
        key = (event.path, event.reason)
        if key in self._notified:
            self._notified.remove(key)
            return
        name = Path(event.path).name
        died = isinstance(event, ModelWorkerDied)
        self._notify_failure(
            f"{name}: worker died" if died else f"{name} failed to load", event.reason
        )

    def _notify_failure(self, title: str, text: str) -> None:
        self.notify(text, title=title, severity="error", timeout=12, markup=False)

    # --- palette --------------------------------------------------------------------------

    def palette_commands(self) -> list[PaletteCommand]:
        """Every action the keyboard offers, plus one entry per model and per theme."""
        commands = [
            PaletteCommand(f"Go to {label}", f"Show the {label} screen", partial(self._go, mode))
            for mode, label in SCREENS_BY_KEY.items()
        ]
        loaded = {m.path for m in self.node.loaded_models()}
        for model in self.node.snapshot().models:
            if model.error is not None:
                continue
            name = Path(model.path).name
            if model.path in loaded:
                commands.append(
                    PaletteCommand(
                        f"Unload model {name}",
                        model.path,
                        partial(self._run, self.unload_model, model.path),
                    )
                )
            else:
                commands.append(
                    PaletteCommand(
                        f"Load model {name}",
                        model.path,
                        partial(self._run, self.load_model, model.path),
                    )
                )
            commands.append(
                PaletteCommand(
                    f"Open playground on {name}",
                    "Prompt the model (loads it first if needed)",
                    partial(self._run, self.open_playground, model.path),
                )
            )
        commands.append(
            PaletteCommand(
                "Rescan model folders",
                "Look for new or changed GGUF files",
                self._run_rescan,
            )
        )
        for theme in self.themes.names:
            commands.append(
                PaletteCommand(
                    f"Theme: {theme}", "Switch the colour theme", partial(self.set_theme, theme)
                )
            )
        commands.append(PaletteCommand("Show keys", "List every key binding", self.action_help))
        commands.append(
            PaletteCommand("Quit", "Stop the node and exit (asks first)", self.action_quit)
        )
        return commands

    def _go(self, mode: str) -> None:
        self.switch_mode(mode)

    def _run(self, command: Callable[[str], Coroutine[Any, Any, object]], path: str) -> None:
        self.run_worker(command(path), group="operator", exit_on_error=False)

    def _run_rescan(self) -> None:
        self.run_worker(self.rescan_models(), group="operator", exit_on_error=False)

    # --- quitting -------------------------------------------------------------------------

    def running_work(self) -> RunningWork:
        return RunningWork(
            loaded=tuple(m.name for m in self.node.loaded_models()),
            generating=tuple(self.in_flight.values()),
        )

    async def action_quit(self) -> None:
        """Ask first, saying what is running; ctrl+q lands here too."""
        if self._quitting or isinstance(self.screen, QuitScreen):
            return
        work = self.running_work()
        self.push_screen(QuitScreen(work), callback=partial(self._quit_answered, work))

    def _quit_answered(self, work: RunningWork, confirmed: bool | None) -> None:
        if not confirmed or self._quitting:
            return
        self._quitting = True
        self.node.record_action("quit", work.describe(), "confirmed")
        self.run_worker(self._shut_down(), name="shutdown", exit_on_error=False)

    async def _shut_down(self, hung_up: bool = False) -> None:
        self.notify("Stopping the node…", title="Quit", timeout=30)
        try:
            await self._stop_node()
        finally:
            if hung_up and not self.is_headless:  # never in tests: it would end pytest
                # Seen here: Textual's writer deadlocked restoring a terminal that no longer
                # exists, leaving the process up forever. The node is stopped and its store
                # closed, so if the screen's own shutdown hangs, end the process.
                timer = threading.Timer(HANGUP_EXIT_GRACE_S, os._exit, (self._exit_code,))
                timer.daemon = True
                timer.start()
            self.exit(self._exit_code)
