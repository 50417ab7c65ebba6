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
from fabstir_tui.engine.inference.gguf_meta import GgufError, read_gguf
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
    proc = subprocess.run(
        [sys.executable, "-c", _LLAMA_PROBE], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
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
    found: list[Path] = []
    missing = [d for d in dirs if not d.is_dir()]
    for d in dirs:
        if d.is_dir():
            found.extend(sorted(d.rglob("*.gguf")))
    bad = []
    for path in found:
        try:
            read_gguf(path)
        except GgufError as exc:
            bad.append(str(exc))
    where = ", ".join(str(d) for d in dirs)
    if bad:
        return Check(
            "models folder",
            "warn",
            f"{len(found)} GGUF file(s) in {where}; {len(bad)} unusable: " + "; ".join(bad[:3]),
            "replace or remove the broken files",
        )
    if not found:
        fix = "put .gguf files there or name a folder with --models-dir / paths.models_dirs"
        if missing:
            return Check(
                "models folder",
                "warn",
                "folder(s) missing: " + ", ".join(str(d) for d in missing),
                fix,
            )
        return Check("models folder", "warn", f"no GGUF files in {where}", fix)
    return Check("models folder", "ok", f"{len(found)} GGUF file(s) in {where}")


def check_disk(data_dir: Path) -> Check:
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    detail = f"{human_bytes(usage.free)} free of {human_bytes(usage.total)} at {probe}"
    if usage.free < 1 * GIB:
        return Check("free disk", "fail", detail, "free space: the store and logs need room")
    if usage.free < 10 * GIB:
        return Check("free disk", "warn", detail, "models need several GiB each; free space")
    if not os.access(probe, os.W_OK):
        return Check(
            "free disk", "fail", f"{probe} is not writable", "choose a writable --data-dir"
        )
    return Check("free disk", "ok", detail)


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
        checks.append(check_disk(loaded.config.paths.data_dir))
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
