"""The engine/UI wall (DESIGN §2): importing every engine module must not pull in Textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import fabstir_tui.engine


def test_engine_never_imports_textual() -> None:
    modules = [
        m.name
        for m in pkgutil.walk_packages(fabstir_tui.engine.__path__, "fabstir_tui.engine.")
        if not m.name.endswith(".worker")  # runs only as its own process, imports llama_cpp
    ]
    assert "fabstir_tui.engine.node" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')"
        " or m.startswith('fabstir_tui.ui'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine imports UI code: {out.stdout.strip()}"
