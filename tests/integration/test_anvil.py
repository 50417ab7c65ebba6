"""The local chain runner against a real anvil from node_modules: ids, accounts, snapshots, stop."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fabstir_tui.engine.chain import Anvil, AnvilError, RpcError, find_anvil


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil(chain_id=4242, accounts=3) as node:
        yield node


def port_is_free(port: int) -> bool:
    """True when nothing listens on the port any more (TIME_WAIT leftovers do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def process_gone(pid: int) -> bool:
    """True when the pid is gone, a zombie, or has been reused by something that is not anvil."""
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "anvil"
    except psutil.NoSuchProcess:
        return True


def test_chain_id_is_the_one_requested(anvil: Anvil) -> None:
    assert int(anvil.rpc("eth_chainId"), 16) == 4242
    assert anvil.http_url == f"http://127.0.0.1:{anvil.port}"
    assert anvil.ws_url == f"ws://127.0.0.1:{anvil.port}"


def test_accounts_are_the_number_requested_and_deterministic(anvil: Anvil) -> None:
    accounts = anvil.rpc("eth_accounts")
    assert len(accounts) == 3
    # The first account of the well-known test mnemonic: devnet addresses never change.
    assert accounts[0].lower() == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    assert int(anvil.rpc("eth_getBalance", [accounts[0], "latest"]), 16) == 10_000 * 10**18


def test_snapshot_and_revert_restore_the_block_number(anvil: Anvil) -> None:
    before = anvil.block_number()
    snap = anvil.snapshot()
    anvil.mine(5)
    assert anvil.block_number() == before + 5
    anvil.revert(snap)
    assert anvil.block_number() == before


def test_increase_time_moves_the_next_block_clock(anvil: Anvil) -> None:
    snap = anvil.snapshot()
    start = int(anvil.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    anvil.increase_time(3600)
    anvil.mine()
    later = int(anvil.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    anvil.revert(snap)
    assert later >= start + 3600


def test_an_rpc_error_names_the_method(anvil: Anvil) -> None:
    with pytest.raises(RpcError, match="no_such_method"):
        anvil.rpc("no_such_method")


def test_two_anvils_get_different_ports() -> None:
    with Anvil(chain_id=1111, accounts=1) as one, Anvil(chain_id=2222, accounts=1) as two:
        assert one.port != two.port
        assert int(one.rpc("eth_chainId"), 16) == 1111
        assert int(two.rpc("eth_chainId"), 16) == 2222


def test_stop_leaves_no_process_and_frees_the_port() -> None:
    node = Anvil(accounts=1).start()
    pid, port = node.pid, node.port
    assert not process_gone(pid)
    assert not port_is_free(port)
    node.stop()
    assert process_gone(pid)
    assert port_is_free(port)
    node.stop()  # a second stop is harmless


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnvilError, match="make bootstrap"):
        Anvil(binary=tmp_path / "anvil").start()


def test_find_anvil_without_node_modules_names_make_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FABSTIR_ANVIL", raising=False)
    with pytest.raises(AnvilError, match="make bootstrap"):
        find_anvil(root=tmp_path)


def test_find_anvil_honours_the_operator_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FABSTIR_ANVIL", raising=False)
    pinned = find_anvil()
    monkeypatch.setenv("FABSTIR_ANVIL", str(pinned))
    assert find_anvil(root=tmp_path) == pinned
    monkeypatch.setenv("FABSTIR_ANVIL", str(tmp_path / "nothing-here"))
    with pytest.raises(AnvilError, match="FABSTIR_ANVIL"):
        find_anvil()


def test_an_anvil_that_dies_at_start_is_reported_with_its_own_words() -> None:
    with pytest.raises(AnvilError, match=r"exited with code 1(.|\n)*invalid"):
        Anvil(mnemonic="not a valid mnemonic").start()
