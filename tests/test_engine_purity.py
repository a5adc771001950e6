"""The engine is pure: it never imports pyln or click (nor does any I/O library of the plugin)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "superscalar_plugin" / "engine"


def test_engine_modules_do_not_import_pyln_or_click() -> None:
    modules = sorted(p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__")
    assert "tree" in modules and "ceremony" in modules
    code = (
        "import sys\n"
        + "".join(f"import superscalar_plugin.engine.{m}\n" for m in modules)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyln', 'click'))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine pulled in: {out.stdout.strip()}"


def test_engine_source_has_no_forbidden_imports() -> None:
    for path in ENGINE.glob("*.py"):
        text = path.read_text()
        for word in ("import pyln", "from pyln", "import click", "from click"):
            assert word not in text, f"{path.name} contains {word!r}"
