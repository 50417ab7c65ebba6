"""The command palette (ctrl+p): every operator action by name, built fresh on each opening."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from fabstir_tui.ui.app import FabstirApp


@dataclass(frozen=True, slots=True)
class PaletteCommand:
    """One palette entry; `run` starts the action (it may ask for confirmation first)."""

    title: str
    help: str
    run: Callable[[], object]


class FabstirCommands(Provider):
    """Lists the app's commands, so keys and palette can never offer different actions."""

    def _commands(self) -> list[PaletteCommand]:
        return cast("FabstirApp", self.app).palette_commands()

    async def discover(self) -> Hits:
        for command in self._commands():
            yield DiscoveryHit(command.title, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            score = matcher.match(command.title)
            if score > 0:
                yield Hit(score, matcher.highlight(command.title), command.run, help=command.help)
