"""The console script as an operator runs it: exit codes, one-sentence errors, --json output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

EXE = Path(sys.executable).parent / "fabstir-tui"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_models_inspect_json(tiny_gguf: Path, data_dir: Path) -> None:
    res = run("--data-dir", str(data_dir), "models", "inspect", str(tiny_gguf), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["architecture"] == "llama"
    assert doc["parameters"] > 0 and doc["context_length"] > 0 and doc["quantisation"]
    assert doc["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


def test_models_run_streams_text(tiny_gguf: Path, data_dir: Path) -> None:
    res = run(
        "--data-dir",
        str(data_dir),
        "--threads",
        "1",
        "models",
        "run",
        str(tiny_gguf),
        "--prompt",
        "hello",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert 0 < doc["completion_tokens"] <= 16 and isinstance(doc["text"], str)


@pytest.mark.parametrize("fixture", ["truncated_gguf", "not_gguf"])
@pytest.mark.parametrize("command", ["inspect", "run"])
def test_bad_file_is_one_sentence_exit_1(
    fixture: str, command: str, request: pytest.FixtureRequest, data_dir: Path
) -> None:
    bad: Path = request.getfixturevalue(fixture)
    extra = ["--prompt", "hi"] if command == "run" else []
    res = run("--data-dir", str(data_dir), "models", command, str(bad), *extra)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    assert bad.name in lines[0]


def test_missing_file(tmp_path: Path, data_dir: Path) -> None:
    res = run("--data-dir", str(data_dir), "models", "inspect", str(tmp_path / "nope.gguf"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "nope.gguf" in res.stderr


def test_models_list_json(tiny_gguf: Path, truncated_gguf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_gguf, folder / "good.gguf")
    shutil.copy(truncated_gguf, folder / "cut.gguf")
    res = run(
        "--data-dir", str(tmp_path / "d"), "--models-dir", str(folder), "models", "list", "--json"
    )
    assert res.returncode == 0, res.stderr
    rows = {Path(m["path"]).name: m for m in json.loads(res.stdout)["models"]}
    assert rows["good.gguf"]["error"] is None and rows["good.gguf"]["architecture"] == "llama"
    assert "truncated" in rows["cut.gguf"]["error"]


def test_doctor_json_reports_gpu_state(data_dir: Path) -> None:
    res = run("--data-dir", str(data_dir), "doctor", "--json")
    doc = json.loads(res.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    gpu = checks["GPU and driver"]
    if not Path("/dev/nvidiactl").exists():
        # This machine has no NVIDIA driver: the real NVML call must say so.
        assert gpu["verdict"] == "not_available"
        assert "NVML" in gpu["detail"] and gpu["fix"]
    else:
        assert gpu["verdict"] == "ok"
    assert checks["llama.cpp build"]["verdict"] in ("ok", "warn")
    assert checks["config"]["verdict"] == "ok"
    assert res.returncode == (0 if doc["ok"] else 1)


def test_config_show_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[node]\nname = "rig-7"\n[inference]\nthreads = 3\n')
    res = run(
        "--config",
        str(cfg),
        "--threads",
        "5",
        "config",
        "show",
        "--json",
        env={"FABSTIR_INFERENCE__CONTEXT_LENGTH": "1024"},
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["node.name"] == {"value": "rig-7", "source": f"file {cfg}"}
    assert doc["inference.threads"] == {"value": 5, "source": "flag --threads"}
    assert doc["inference.context_length"]["source"] == "env FABSTIR_INFERENCE__CONTEXT_LENGTH"
    assert doc["inference.slots"]["source"] == "default"


def test_bad_config_is_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[inference]\nthreads = -1\n")
    res = run("--config", str(cfg), "config", "show")
    assert res.returncode == 2
    assert str(cfg) in res.stderr and "inference.threads" in res.stderr
    assert "Traceback" not in res.stderr


def test_headless_stops_cleanly_on_sigterm(tiny_gguf: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            str(EXE),
            "--headless",
            "--data-dir",
            str(tmp_path / "d"),
            "--models-dir",
            str(tiny_gguf.parent),
            "--gpu-backend",
            "none",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "running headless" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "node stopped" in rest


@pytest.mark.slow
def test_headless_demo_once_streams_smollm(tmp_path: Path) -> None:
    res = run(
        "--data-dir",
        str(tmp_path / "d"),
        "--gpu-backend",
        "none",
        "demo",
        "--headless",
        "--once",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    answer = res.stdout.split("\n", 1)[1]
    assert answer.strip(), "the demo prompt should stream a non-empty answer"
    assert "AUDIT   load model SmolLM2-135M-Instruct.Q4_1.gguf: loaded" in res.stderr


def test_engine_version_flag() -> None:
    res = run("--version")
    assert res.returncode == 0 and "fabstir-tui" in res.stdout


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _wait_gone(procs: list[psutil.Process], limit_s: float = 30) -> list[psutil.Process]:
    """Processes still alive after waiting up to `limit_s` for them to exit."""
    _, alive = psutil.wait_procs(procs, timeout=limit_s)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _demo(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(EXE),
            "--data-dir",
            str(tmp_path / "d"),
            "--gpu-backend",
            "none",
            "demo",
            "--headless",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_during_model_load_stops_at_once_without_orphans(tmp_path: Path) -> None:
    proc = _demo(tmp_path)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "loading SmolLM2" in line and "loading weights" in line:
                break
        workers = _children(proc.pid)
        assert workers, "the model's worker process should be running by now"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130), rest
    assert "node stopped" in rest and "Traceback" not in rest
    assert _wait_gone(workers) == []


@pytest.mark.slow
def test_worker_exits_when_the_node_is_killed(tmp_path: Path) -> None:
    proc = _demo(tmp_path)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "running headless" in line:
                break
        workers = _children(proc.pid)
        assert workers
        proc.kill()  # SIGKILL: no clean-up code runs in the node
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The worker notices its pipe closing and exits by itself: no orphan holds the model.
    leftover = _wait_gone(workers)
    for p in leftover:
        p.kill()
    assert leftover == []
