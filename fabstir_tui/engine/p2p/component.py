"""What a piece of the P2P side (job protocol, discovery, peer book) plugs into the service with.

A component is attached on the trio side once the host listens: it registers its stream
handlers and starts its background tasks in the nursery it is given. The service cancels that
nursery before it closes the host, so a component needs no stop method of its own; anything
that must outlive a cancel (a final write) shields itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio
    from libp2p.abc import IHost

    from fabstir_tui.engine.p2p.bridge import TrioBridge


class P2PComponent(Protocol):
    """A part of the node's P2P side with handlers and/or background tasks."""

    name: str

    async def attach(self, host: IHost, bridge: TrioBridge, nursery: trio.Nursery) -> None:
        """Trio side: register handlers and start tasks in `nursery`; must not block long."""
