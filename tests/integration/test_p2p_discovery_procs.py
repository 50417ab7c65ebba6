"""Discovery across processes: five `fabstir-tui --headless` nodes (P2P on 127.0.0.1:0, each
serving its own tiny GGUF, no chain) join through the first; `fabstir-tui p2p find` run as a
subprocess finds the right host for each model, by id and by GGUF path."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gguf_factory import write_tiny_llama

from fabstir_tui.engine.inference.sha256 import sha256_file

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).parent / "fabstir-tui"
NODES = 5
_ADDR = re.compile(r"libp2p host (\S+) on .*?(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+?)(?:,|\s|$)")


@dataclass
class NodeProc:
    proc: subprocess.Popen[bytes]
    log: Path
    model: Path
    model_id: str
    peer_id: str = ""
    addr: str = ""


def _config(root: Path, models: Path, bootstrap: list[str]) -> Path:
    path = root / "config.toml"
    path.write_text(
        "\n".join(
            [
                "[paths]",
                f'data_dir = "{root / "data"}"',
                f'cache_dir = "{root / "cache"}"',
                f'models_dirs = ["{models}"]',
                "[inference]",
                "threads = 1",
                "[telemetry]",
                'gpu_backend = "none"',
                "[p2p]",
                "enabled = true",
                'listen_addrs = ["/ip4/127.0.0.1/tcp/0"]',
                f"bootstrap = {json.dumps(bootstrap)}",
                "announce_interval_s = 5",
                "",
            ]
        )
    )
    return path


def _start(root: Path, index: int, bootstrap: list[str]) -> NodeProc:
    models = root / "models"
    models.mkdir(parents=True)
    model = write_tiny_llama(models / f"tiny-{index}.gguf", seed=index + 1)
    config = _config(root, models, bootstrap)
    log = root / "stderr.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(EXE), "--config", str(config), "--headless"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return NodeProc(proc, log, model, sha256_file(model))


def _wait_for_address(node: NodeProc, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        match = _ADDR.search(node.log.read_text(errors="replace"))
        if match:
            node.peer_id, node.addr = match.group(1), match.group(2)
            return
        if node.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no listen address in {node.log}:\n{node.log.read_text()[-3000:]}")


def _stop(node: NodeProc) -> None:
    if node.proc.poll() is not None:
        return
    node.proc.send_signal(signal.SIGTERM)
    try:
        node.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProc]]:
    root = tmp_path_factory.mktemp("procs")
    started: list[NodeProc] = []
    try:
        first = _start(root / "n0", 0, [])
        started.append(first)
        _wait_for_address(first)
        for index in range(1, NODES):
            started.append(_start(root / f"n{index}", index, [first.addr]))
        for node in started[1:]:
            _wait_for_address(node)
        yield started
    finally:
        for node in started:  # every process we started, by its Popen handle (PID)
            _stop(node)


def _find(model: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), "p2p", "find", model, "--bootstrap", bootstrap, "--json", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=90,
    )


def _find_until_found(model: str, bootstrap: str, limit_s: float = 120) -> dict[str, object]:
    """Retry until the host shows up (it hashes its GGUF, then provides); a safety net only."""
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        last = _find(model, bootstrap)
        if last.returncode == 0:
            document: dict[str, object] = json.loads(last.stdout)
            return document
        time.sleep(1)
    assert last is not None
    raise AssertionError(f"p2p find never found {model}: rc={last.returncode} {last.stderr}")


def test_p2p_find_names_the_host_of_each_model(nodes: list[NodeProc]) -> None:
    assert len({n.model_id for n in nodes}) == NODES  # distinct bytes, distinct ids
    bootstrap = nodes[0].addr
    for node in nodes:
        started = time.monotonic()
        document = _find_until_found("0x" + node.model_id, bootstrap)
        print(f"\nfound node {node.peer_id[-6:]} after {time.monotonic() - started:.1f} s")
        assert document["model_id"] == node.model_id
        hosts = document["hosts"]
        assert isinstance(hosts, list)
        assert [h["peer_id"] for h in hosts] == [node.peer_id]
        [host] = hosts
        assert node.addr in host["addrs"]
        assert host["source"] in ("record", "query")
        assert host["name"] and host["price_per_million"] == 0  # no chain: not priced


def test_p2p_find_hashes_a_gguf_path(nodes: list[NodeProc]) -> None:
    node = nodes[-1]
    document = _find_until_found(str(node.model), nodes[1].addr)  # any node can bootstrap
    assert document["model_id"] == node.model_id
    assert [h["peer_id"] for h in document["hosts"]] == [node.peer_id]  # type: ignore[union-attr]


def test_p2p_find_prints_hosts_for_people(nodes: list[NodeProc]) -> None:
    node = nodes[2]
    _find_until_found(node.model_id, nodes[0].addr)  # it is in the DHT by now
    result = subprocess.run(
        [str(EXE), "p2p", "find", node.model_id, "--bootstrap", nodes[0].addr],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert f"peer      {node.peer_id}" in result.stdout
    assert f"addr      {node.addr}" in result.stdout
    assert "price     0 per million tokens" in result.stdout


def test_p2p_find_of_an_unserved_model_fails_cleanly(nodes: list[NodeProc]) -> None:
    result = _find("ab" * 32, nodes[0].addr)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"model_id": "ab" * 32, "hosts": []}
    assert "no host provides model" in result.stderr
    assert "Traceback" not in result.stderr


def test_p2p_info_still_answers_next_to_discovery(nodes: list[NodeProc]) -> None:
    node = nodes[1]
    result = subprocess.run(
        [str(EXE), "p2p", "info", node.addr, "--json", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert [m["id"] for m in json.loads(result.stdout)["models"]] == [node.model_id]


def test_the_nodes_stop_cleanly_on_sigterm(nodes: list[NodeProc]) -> None:
    """Last in the module: the discovery tasks end with the node, no trio run dies."""
    for node in reversed(nodes):
        _stop(node)
    for node in nodes:
        log = node.log.read_text(errors="replace")
        assert node.proc.returncode == 0, log[-3000:]
        assert "node stopped" in log
        assert "TrioInternalError" not in log and "trio run ended with an error" not in log
