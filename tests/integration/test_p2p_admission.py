"""Admission control for inbound upgrades (issue 4 item 4), on real sockets and real hosts.

The unit-level tests stall handshakes with plain TCP sockets that connect and send nothing,
so a slot stays busy until the library's upgrade timeout fires; the burst test runs the
bench's burst (real P2PService target, newcomers in separate processes).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from fabstir_tui.engine.p2p.admission import InboundAdmission, admission_of
from fabstir_tui.engine.p2p.host import HostConfig, running_host

LOCAL = ("/ip4/127.0.0.1/tcp/0",)
ECHO = "/fabstir-test/echo/1.0.0"
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, **kw: Any) -> HostConfig:
    return HostConfig(tmp / "identity", LOCAL, **kw)


def _tcp_port(host: Any) -> int:
    return int(host.get_addrs()[0].value_for_protocol("tcp"))


async def _wait_until(check: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    with trio.fail_after(limit_s):  # a safety net, not a measurement
        while not check():
            await trio.sleep(0.01)


async def _dial_and_echo(target: Any, client_dir: Path, payload: bytes) -> bytes:
    """A real libp2p newcomer: fresh identity, dial, open the echo protocol, read back."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import PeerInfo

    async with running_host(_config(client_dir), create_new_key_pair()) as client:
        await client.connect(PeerInfo(target.get_id(), target.get_addrs()))
        stream = await client.new_stream(target.get_id(), [TProtocol(ECHO)])
        await stream.write(payload)
        data: bytes = await stream.read(len(payload))
        await stream.close()
        return data


async def _echo(stream: Any) -> None:
    try:
        await stream.write(await stream.read(1024))
    except Exception:  # the peer went away
        pass
    finally:
        await stream.close()


def _run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


def test_at_most_max_handshakes_and_the_timeout_starts_at_the_turn(tmp_path: Path) -> None:
    """One slot, a 1 s upgrade timeout, two stalled sockets ahead: they get one turn each,
    never two at once, and the newcomer behind them still connects although it waited
    longer than the upgrade timeout - its timeout started when its turn came. Its slot is
    then held until its first application stream has been handled."""

    async def scenario() -> None:
        from libp2p.custom_types import TProtocol

        config = _config(
            tmp_path / "target", max_handshakes=1, upgrade_timeout_s=1.0, admission_settle_s=60.0
        )
        async with running_host(config) as target:
            target.set_stream_handler(TProtocol(ECHO), _echo)
            admission = admission_of(target)
            assert admission is not None
            port = _tcp_port(target)
            stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await _wait_until(lambda: admission.waiting == 1, "the second socket queued")
            assert admission.in_progress == 1
            echoed = await _dial_and_echo(target, tmp_path / "client", b"hello")
            assert echoed == b"hello"
            # The newcomer's slot is held (settle) until its first application stream is
            # handled - the echo, not identify - long before the 60 s settle limit.
            await _wait_until(lambda: admission.in_progress == 0, "the slot released")
            stats = admission.stats
            assert stats.peak_in_progress == 1  # three arrivals, never two upgrades at once
            assert stats.peak_waiting >= 2
            assert stats.failed == 2  # each stalled socket had its full turn and timed out
            assert stats.upgraded == 1
            assert stats.longest_wait_s > config.upgrade_timeout_s
            assert stats.settle_timeouts == 0
            for sock in stalled:
                await sock.aclose()

    _run(scenario)


def test_a_connection_waits_its_turn_at_most_the_queue_limit(tmp_path: Path) -> None:
    """Behind a stalled handshake that holds the only slot, a second arrival is closed when
    the queue limit passes (its dialer would have given up), not left hanging."""

    async def scenario() -> None:
        config = _config(tmp_path, max_handshakes=1, upgrade_timeout_s=30.0, admission_queue_s=0.5)
        async with running_host(config) as target:
            admission = admission_of(target)
            assert admission is not None
            port = _tcp_port(target)
            holder = await trio.open_tcp_stream("127.0.0.1", port)
            await _wait_until(lambda: admission.in_progress == 1, "the first socket admitted")
            waiter = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(20):
                data = await waiter.receive_some(1024)
            assert data == b""  # closed by the target without a byte of handshake
            assert admission.stats.queue_timeouts == 1
            assert admission.in_progress == 1  # the holder keeps its turn
            await holder.aclose()
            await waiter.aclose()

    _run(scenario)


def test_max_handshakes_none_leaves_the_library_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_host(_config(tmp_path, max_handshakes=None)) as target:
            assert admission_of(target) is None

    _run(scenario)


def test_installing_twice_on_one_swarm_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_host(_config(tmp_path)) as target:
            with pytest.raises(RuntimeError, match="already installed"):
                InboundAdmission(4, 10.0).install(target.get_network())

    _run(scenario)


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("p2p_burst", ROOT / "bench" / "p2p_burst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["p2p_burst"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_burst_of_newcomers_is_all_answered() -> None:
    """60 fresh peers from 3 processes dial within 1 s; each is answered within 30 s."""
    result = _load_bench().run_burst(newcomers=60, processes=3)
    assert result["reasons"] == {}
    assert result["successes"] == 60
    assert result["target_admission"]["upgraded"] >= 60
