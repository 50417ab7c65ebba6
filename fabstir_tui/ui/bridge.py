"""The one place the UI reads the engine bus: a feed owned by the screen that draws the data.

A screen creates an `EngineFeed` for the event types it shows and starts it on mount; the
feed's worker belongs to that screen, so when the screen goes away the worker is cancelled with
it and no message can reach widgets that no longer exist (the shutdown race measured in
FIELD-NOTES). The subscription is closed on unmount, so the engine stops queueing for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.screen import Screen
from textual.worker import Worker

from fabstir_tui.engine.events import Event, EventBus, Subscription
from fabstir_tui.ui.messages import message_for


class EngineFeed:
    """Turns a bus subscription into Textual messages posted to one screen."""

    def __init__(
        self,
        screen: Screen[Any],
        bus: EventBus,
        kinds: Iterable[type[Event]],
        *,
        maxsize: int = 2000,
    ) -> None:
        self._screen = screen
        self._bus = bus
        self._kinds = tuple(kinds)
        self._maxsize = maxsize
        self._subscription: Subscription | None = None
        self._worker: Worker[None] | None = None
        self.posted = 0

    @property
    def running(self) -> bool:
        return self._subscription is not None

    def start(self) -> None:
        """Subscribe now (so nothing published from here on is missed) and start the pump."""
        if self._subscription is not None:
            return
        subscription = self._bus.subscribe(*self._kinds, maxsize=self._maxsize)
        self._subscription = subscription
        self._worker = self._screen.run_worker(
            self._pump(subscription),
            name=f"engine-feed:{type(self._screen).__name__}",
            group="engine-feed",
            exit_on_error=False,
        )

    async def _pump(self, subscription: Subscription) -> None:
        try:
            async for event in subscription:
                message = message_for(event)
                if message is not None and self._screen.post_message(message):
                    self.posted += 1
        finally:
            subscription.close()

    def close(self) -> None:
        """Unsubscribe and stop the pump; safe to call twice."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
