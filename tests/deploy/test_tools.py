"""`make tools` installs helm, prometheus and promtool into .venv/tools/bin without root; running it
again keeps what is there."""

from __future__ import annotations

import subprocess
import sys

from deploy_helpers import REPO, TOOLS_BIN, tool


def test_tools_are_installed_and_run() -> None:
    assert "v4." in subprocess.run([str(tool("helm")), "version", "--short"], capture_output=True, text=True,
                                   check=True).stdout
    for name in ("prometheus", "promtool"):
        out = subprocess.run([str(tool(name)), "--version"], capture_output=True, text=True, check=True)
        assert "version 2." in out.stdout + out.stderr


def test_installing_again_changes_nothing() -> None:
    before = {p.name: p.stat().st_mtime_ns for p in TOOLS_BIN.iterdir()}
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "tools" / "install_tools.py"),
                           "--dest", str(TOOLS_BIN.parent)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "installed" not in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in TOOLS_BIN.iterdir()} == before
