"""Which P2P components a node runs, built from the node itself (one line per component)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.p2p.component import P2PComponent


def node_components(node: Node) -> tuple[P2PComponent, ...]:
    """The components attached to the node's host, in attach order."""
    components: list[P2PComponent] = []
    return tuple(components)
