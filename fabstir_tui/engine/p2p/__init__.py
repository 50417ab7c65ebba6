"""P2P networking (DESIGN §5): libp2p host, discovery and the Fabstir wire protocols."""
