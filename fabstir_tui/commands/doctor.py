"""`fabstir-tui doctor`: pre-flight checks an operator runs before selling inference."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, emit_json, human_bytes
from fabstir_tui.config import LoadedConfig
from fabstir_tui.engine.events import EventBus
from fabstir_tui.engine.inference.registry import ModelRegistry
from fabstir_tui.engine.telemetry.service import probe_gpu

Verdict = Literal["ok", "warn", "fail", "not_available"]
GIB = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""


_LLAMA_PROBE = (
    "import json, llama_cpp;"
    "print(json.dumps({'version': llama_cpp.__version__,"
    "'gpu_offload': bool(llama_cpp.llama_supports_gpu_offload()),"
    "'system_info': llama_cpp.llama_print_system_info().decode()}))"
)


def check_llama_build(gpu_present: bool) -> Check:
    """Probe in a child: a broken libllama (SIGILL on an old CPU) must not kill doctor."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LLAMA_PROBE], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return Check(
            "llama.cpp build",
            "fail",
            "loading llama_cpp took over 2 minutes",
            "check the disk and rerun; `make bootstrap` rebuilds the wheel",
        )
    if proc.returncode != 0 or not proc.stdout.strip().startswith("{"):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(
            "llama.cpp build",
            "fail",
            f"llama_cpp does not load (exit {proc.returncode}): {tail}",
            "run `make bootstrap` to rebuild the wheel for this machine",
        )
    import json

    info = json.loads(proc.stdout)
    kind = "GPU (offload supported)" if info["gpu_offload"] else "CPU only"
    detail = f"llama-cpp-python {info['version']}, {kind}; {info['system_info'].strip()}"
    if gpu_present and not info["gpu_offload"]:
        return Check(
            "llama.cpp build",
            "warn",
            detail,
            "a GPU is present but this build cannot use it: rebuild with "
            'LLAMA_EXTRA_CMAKE_ARGS="-DGGML_CUDA=ON" make bootstrap',
        )
    return Check("llama.cpp build", "ok", detail)


def check_gpu() -> Check:
    snap = probe_gpu()
    if not snap.available:
        return Check(
            "GPU and driver",
            "not_available",
            snap.reason or "no GPU found",
            "install the NVIDIA driver (nvidia-smi must work) to serve on a GPU; "
            "the node still serves on the CPU",
        )
    names = ", ".join(f"{d.index}: {d.name}" for d in snap.devices)
    return Check(
        "GPU and driver",
        "ok",
        f"{len(snap.devices)} GPU(s) [{names}], driver {snap.driver_version}, "
        f"CUDA {snap.cuda_version}",
    )


def check_models(dirs: list[Path]) -> Check:
    """The same discovery and parsing the node uses, so doctor and `models list` agree."""
    models = ModelRegistry(dirs, None, EventBus()).scan()
    bad = [m for m in models if m.error]
    where = ", ".join(str(d) for d in dirs)
    if bad:
        return Check(
            "models folder",
            "warn",
            f"{len(models)} GGUF file(s) in {where}; {len(bad)} unusable: "
            + "; ".join(str(m.error) for m in bad[:3]),
            "replace or remove the broken files",
        )
    if not models:
        missing = [d for d in dirs if not d.expanduser().exists()]
        fix = "put .gguf files there or name a folder with --models-dir / paths.models_dirs"
        if missing:
            return Check(
                "models folder", "warn", "missing: " + ", ".join(str(d) for d in missing), fix
            )
        return Check("models folder", "warn", f"no GGUF files in {where}", fix)
    return Check("models folder", "ok", f"{len(models)} GGUF file(s) in {where}")


def check_data_dir(data_dir: Path) -> Check:
    """The store lives here: it must be (or become) a writable folder with room."""
    if data_dir.exists() and not data_dir.is_dir():
        return Check(
            "data dir",
            "fail",
            f"{data_dir} exists but is not a folder",
            "choose another --data-dir or paths.data_dir",
        )
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        return Check(
            "data dir",
            "fail",
            f"{probe} is not a writable folder",
            "choose a writable --data-dir or paths.data_dir",
        )
    usage = shutil.disk_usage(probe)
    detail = f"{data_dir}: {human_bytes(usage.free)} free of {human_bytes(usage.total)}"
    if usage.free < 1 * GIB:
        return Check("data dir", "fail", detail, "free space: the store and logs need room")
    if usage.free < 10 * GIB:
        return Check("data dir", "warn", detail, "models need several GiB each; free space")
    return Check("data dir", "ok", detail)


def run_doctor(loaded: LoadedConfig | None, config_error: str | None, as_json: bool) -> int:
    checks: list[Check] = []
    if loaded is None:
        checks.append(
            Check(
                "config",
                "fail",
                config_error or "invalid",
                "fix the value named above, then rerun `fabstir-tui config show`",
            )
        )
    else:
        where = str(loaded.config_file) if loaded.config_file else "defaults (no config file)"
        checks.append(Check("config", "ok", f"valid: {where}"))
    gpu = check_gpu()
    checks.append(gpu)
    checks.append(check_llama_build(gpu.verdict == "ok"))
    if loaded is not None:
        checks.append(check_models(list(loaded.config.paths.models_dirs)))
        checks.append(check_data_dir(loaded.config.paths.data_dir))
        # Imported here: doctor_chain imports Check from this module.
        from fabstir_tui.commands.doctor_chain import chain_checks

        checks.extend(chain_checks(loaded.config))
    ok = all(c.verdict != "fail" for c in checks)
    if as_json:
        emit_json({"ok": ok, "checks": [asdict(c) for c in checks]})
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "not_available": "n/a "}
        for c in checks:
            print(f"[{marks[c.verdict]}] {c.name}: {c.detail}")
            if c.fix and c.verdict != "ok":
                print(f"       fix: {c.fix}")
    return EXIT_OK if ok else EXIT_FAILED
