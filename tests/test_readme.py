"""The README's copy of ``run.py --help`` is the parser's real output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("update_readme_help", ROOT / "scripts" / "update_readme_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_real_run_help():
    script = _script()
    shown = script.readme_help((ROOT / "README.md").read_text(encoding="utf-8"))
    assert shown == script.run_help(), "README.md's run.py --help is stale: run python scripts/update_readme_help.py"
