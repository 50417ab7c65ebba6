"""mDNS on a private network namespace (`unshare -rn`, loopback with MULTICAST on): two real
nodes with no bootstrap peers find and dial each other. This machine's `lo` has no MULTICAST
flag, so the nodes run in a child process inside the namespace; skipped where unshare fails."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NAMESPACE_SETUP = "ip link set lo up multicast on && ip route add 224.0.0.0/4 dev lo"


def _namespace_works() -> str | None:
    """None when `unshare -rn` and `ip` work here, else the reason to skip."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", NAMESPACE_SETUP], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"no private network namespace here: {probe.stderr.strip()}"
    return None


def test_two_nodes_find_each_other_by_mdns() -> None:
    reason = _namespace_works()
    if reason is not None:
        pytest.skip(reason)
    script = f"{NAMESPACE_SETUP} && exec {sys.executable} {Path(__file__)}"
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    outcome = json.loads(lines[-1])
    print(f"\nmDNS: both connected after {outcome['seconds']:.1f} s")
    a, b = outcome["peers"]
    assert b in outcome["a_connected"] and a in outcome["b_connected"]
    assert b in outcome["a_found"] or a in outcome["b_found"]


async def _inside_namespace() -> None:
    """Child process: two services with only mDNS; print who connected to whom as JSON."""
    import time

    from fabstir_tui.config import Config, P2pSection, PathsSection
    from fabstir_tui.engine.p2p.mdns import MdnsDiscovery
    from fabstir_tui.engine.p2p.messages import Capacity, InfoResponse
    from fabstir_tui.engine.p2p.service import P2PService

    def info() -> InfoResponse:
        return InfoResponse((), Capacity(0, 0), "", "", "test")

    tmp = Path(tempfile.mkdtemp())
    pairs = []
    for name in ("a", "b"):
        config = Config(
            paths=PathsSection(data_dir=tmp / name, cache_dir=tmp / f"{name}-cache"),
            p2p=P2pSection(enabled=True, listen_addrs=["/ip4/127.0.0.1/tcp/0"], mdns=True),
        )
        mdns = MdnsDiscovery()
        pairs.append((P2PService(config, info, components=(mdns,)), mdns))
    started = time.monotonic()
    try:
        for service, _ in pairs:
            await service.start()
        (sa, ma), (sb, mb) = pairs
        async with asyncio.timeout(60):
            while not (sb.peer_id in sa.connected_peers() and sa.peer_id in sb.connected_peers()):
                await asyncio.sleep(0.1)
        outcome = {
            "seconds": time.monotonic() - started,
            "peers": [sa.peer_id, sb.peer_id],
            "a_connected": sa.connected_peers(),
            "b_connected": sb.connected_peers(),
            "a_found": sorted(ma.found),
            "b_found": sorted(mb.found),
        }
        print(json.dumps(outcome), flush=True)
    finally:
        for service, _ in pairs:
            await service.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(_inside_namespace())
