"""Which P2P components a node runs, built from the node itself (one line per component)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir_tui.engine.p2p import discovery, job_protocol

if TYPE_CHECKING:
    from fabstir_tui.engine.node import Node
    from fabstir_tui.engine.p2p.component import P2PComponent


def node_components(node: Node) -> tuple[P2PComponent, ...]:
    """The components attached to the node's host, in attach order."""
    components: list[P2PComponent] = []
    components.append(node.peer_book)
    components.append(job_protocol.JobProtocol(node))
    components.append(job_protocol.receipt_component(node))
    components.extend(discovery.node_discovery_components(node))
    return tuple(components)
