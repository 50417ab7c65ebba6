"""The committed artifacts are exactly what the pinned solc makes of contracts/*.sol today."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fabstir_tui.engine.chain.anvil import PROJECT_ROOT
from fabstir_tui.engine.chain.artifacts import ArtifactError, artifact_names, load_artifact

COMMITTED = PROJECT_ROOT / "fabstir_tui" / "engine" / "chain" / "artifacts"
SCRIPT = PROJECT_ROOT / "scripts" / "compile-contracts.mjs"
CONTRACTS = ["FabstirTestToken", "HostEarnings", "JobMarketplace", "ModelRegistry", "NodeRegistry"]


def compile_into(out: Path) -> None:
    """Run the same compile script `make contracts` runs, writing into out."""
    node = shutil.which("node")
    assert node is not None, "node is not installed: run `make bootstrap`"
    subprocess.run([node, str(SCRIPT), str(out)], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    compile_into(out)
    return out


def test_recompiled_artifacts_match_the_committed_ones(fresh: Path) -> None:
    committed = {p.name: p.read_text() for p in sorted(COMMITTED.glob("*.json"))}
    recompiled = {p.name: p.read_text() for p in sorted(fresh.glob("*.json"))}
    assert sorted(recompiled) == sorted(committed), "artifact set differs: run `make contracts`"
    stale = [name for name in committed if committed[name] != recompiled[name]]
    assert stale == [], f"stale artifacts {stale}: run `make contracts`"


def test_a_changed_source_changes_the_output(tmp_path: Path, fresh: Path) -> None:
    # The check above can fail: compiling an edited copy of the sources gives other bytecode.
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts")
    (root / "node_modules").symlink_to(PROJECT_ROOT / "node_modules")
    shutil.copytree(PROJECT_ROOT / "contracts", root / "contracts")
    token = root / "contracts" / "FabstirTestToken.sol"
    token.write_text(token.read_text().replace('"FUSD"', '"FUSX"'))
    out = tmp_path / "out"
    node = shutil.which("node")
    assert node is not None
    subprocess.run([node, str(root / "scripts" / SCRIPT.name), str(out)], check=True, timeout=120)
    assert (out / "FabstirTestToken.json").read_text() != (
        fresh / "FabstirTestToken.json"
    ).read_text()
    assert (out / "ModelRegistry.json").read_text() == (fresh / "ModelRegistry.json").read_text()


def test_artifacts_are_reproducible_and_carry_no_local_paths() -> None:
    for path in COMMITTED.glob("*.json"):
        text = path.read_text()
        assert str(PROJECT_ROOT) not in text
        data = json.loads(text)
        assert list(data) == sorted(data)
        assert data["sourceName"] == f"contracts/{data['contractName']}.sol"
        assert data["settings"]["evmVersion"] == "cancun"
        assert data["compiler"].startswith("solc 0.8.37+")


def test_every_contract_loads_from_package_data() -> None:
    assert artifact_names() == CONTRACTS
    for name in CONTRACTS:
        artifact = load_artifact(name)
        assert artifact.name == name
        # Creation code opens with a PUSH (0x60 PUSH1, 0x61 PUSH2 with many immutables, ...).
        assert 0x60 <= int(artifact.bytecode[2:4], 16) <= 0x7F and len(artifact.bytecode) > 100
        assert artifact.deployed_bytecode.startswith("0x")
        assert any(item["type"] == "error" for item in artifact.abi)
        assert any(item["type"] == "event" for item in artifact.abi)


def test_a_missing_artifact_names_make_contracts() -> None:
    with pytest.raises(ArtifactError, match="make contracts") as info:
        load_artifact("NoSuchMarketplace")
    assert "NodeRegistry" in str(info.value)
