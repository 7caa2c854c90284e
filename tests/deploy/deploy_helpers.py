"""Helpers of the deployment checks: the tools installed by ``make tools``, the chart and its
rendered manifests, and the all-in-one stack's engine address."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "coachforge"
VALUES_DIR = Path(__file__).resolve().parent / "values"
TOOLS_BIN = Path(os.environ.get("COACHFORGE_TOOLS_BIN", REPO / ".venv" / "tools" / "bin"))


def tool(name: str) -> Path:
    """A binary installed by ``make tools``; a clear failure when it is missing."""
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make tools` (part of `make test`) to install it")
    return path


def helm(helm_env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, env=helm_env, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {shlex.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(helm_env: dict[str, str], *value_args: str, release: str = "coachforge",
           namespace: str = "coachforge") -> list[dict[str, Any]]:
    """``helm template`` the chart; the manifests as dicts (empty documents dropped)."""
    out = helm(helm_env, "template", release, str(CHART), "--namespace", namespace, *value_args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


#: Value sets rendered and validated by the checks: (name, helm arguments).
VALUE_SETS: list[tuple[str, tuple[str, ...]]] = [
    ("defaults", ()),
    ("external", ("-f", str(VALUES_DIR / "external.yaml"))),
    ("gpu-bundled", ("-f", str(VALUES_DIR / "gpu-bundled.yaml"))),
    ("cpu-dev", ("-f", str(REPO / "deploy" / "helm" / "values-cpu-dev.yaml"))),
]


def engine_url(data_dir: Path) -> str:
    """The all-in-one engine's base URL, read from the stack's supervisord configuration."""
    conf = (data_dir / "supervisord.conf").read_text()
    for section in conf.split("[program:"):
        if section.startswith("engine]"):
            command = next(line for line in section.splitlines() if line.startswith("command="))
            args = shlex.split(command.removeprefix("command="))
            host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
            return f"http://{host}:{port}"
    raise AssertionError("no engine program in the stack's supervisord.conf")


def metrics_names(text: str) -> set[str]:
    """Metric family names exposed in a Prometheus text exposition."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", text, re.M)}
