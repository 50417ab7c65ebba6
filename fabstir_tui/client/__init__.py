"""Client side of the Fabstir P2P protocols: ask other nodes over libp2p."""

from fabstir_tui.client.p2p import P2PAddressError, P2PClientError, query_info

__all__ = ["P2PAddressError", "P2PClientError", "query_info"]
