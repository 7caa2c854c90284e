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


#: ``helm template`` arguments that make the cluster advertise the custom resource APIs the chart checks for
#: (the Prometheus operator's and KEDA's); without them, ServiceMonitors, PrometheusRules and ScaledObjects
#: are left out.
MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")
KEDA_API = ("--api-versions", "keda.sh/v1alpha1")
EXAMPLES_DIR = REPO / "deploy" / "helm" / "examples"

#: Value sets rendered and validated by the checks: (name, helm arguments).
VALUE_SETS: list[tuple[str, tuple[str, ...]]] = [
    ("defaults", ()),
    ("external", ("-f", str(VALUES_DIR / "external.yaml"), *MONITORING_API)),
    ("gpu-bundled", ("-f", str(VALUES_DIR / "gpu-bundled.yaml"), *MONITORING_API)),
    ("gitops-minio", ("-f", str(VALUES_DIR / "gitops-minio.yaml"), *MONITORING_API, *KEDA_API)),
    ("several-bases", ("-f", str(VALUES_DIR / "several-bases.yaml"), *MONITORING_API)),
    ("cpu-dev", ("-f", str(REPO / "deploy" / "helm" / "values-cpu-dev.yaml"))),
    ("strimzi", ("-f", str(EXAMPLES_DIR / "values-strimzi.yaml"))),
    ("cloudnativepg", ("-f", str(EXAMPLES_DIR / "values-cloudnativepg.yaml"))),
]


def values_args(args: tuple[str, ...]) -> tuple[str, ...]:
    """``args`` without ``--api-versions`` (``helm lint`` and ``helm install`` do not take it)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--api-versions":
            skip = True
        else:
            kept.append(arg)
    return tuple(kept)


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


# -- PromQL expressions of the chart's rules and dashboards --------------------------------------------

def rules_from_manifests(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule's spec as a Prometheus rules file (``{"groups": [...]}``)."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, f"expected one PrometheusRule, got {len(rules)}"
    return {"groups": rules[0]["spec"]["groups"]}


def dashboards_from_manifests(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Dashboard JSON by file name, from the rendered ConfigMaps."""
    import json

    boards: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"].get("labels", {}):
            for name, text in doc["data"].items():
                boards[name] = json.loads(text)
    return boards


#: What Grafana's built-in variables stand for when a dashboard query is run directly.
GRAFANA_BUILTINS = {"$__rate_interval": "30s", "$__interval": "10s", "$__range": "5m"}


def dashboard_expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, with variables substituted:
    query variables by ``.*`` (their "All" value), text/constant variables by their value."""
    values: dict[str, str] = {}
    found: list[tuple[str, str]] = []
    for var in board.get("templating", {}).get("list", []):
        if var["type"] == "query":
            values[var["name"]] = var.get("allValue") or ".*"
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert m, f"{board['uid']}: variable {var['name']}: unsupported query {query!r}"
            found.append((f"{board['uid']} variable {var['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
        elif var["type"] in ("textbox", "constant", "custom"):
            values[var["name"]] = var["query"]

    def substitute(expr: str) -> str:
        for key, value in GRAFANA_BUILTINS.items():
            expr = expr.replace(key, value)
        for name in sorted(values, key=len, reverse=True):
            expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
        assert "$" not in expr, f"unsubstituted variable in {expr!r}"
        return expr

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((f"{board['uid']} panel {panel['title']!r} {target['refId']}", substitute(target["expr"])))

    walk(board.get("panels", []))
    return found


def rule_expressions(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{group['name']} {rule.get('record') or rule.get('alert')}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool\b)?")
_SET_OPERATOR = re.compile(r"\b(and|or|unless)\b(\s+(on|ignoring)\s*\([^)]*\))?")


def _split_top_level(expr: str, pattern: re.Pattern[str]) -> list[str]:
    """Split ``expr`` at matches of ``pattern`` outside brackets and string literals."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            m = pattern.match(expr, i)
            if m:
                parts.append(expr[start:i])
                start = i = m.end()
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def data_operands(expr: str) -> list[str]:
    """The parts of ``expr`` that must each return series: alert conditions (``x > 0.05``) and set
    operations are split, number literals dropped, and ``absent(x)`` checked as ``x`` (absent is
    empty exactly when x has data)."""
    operands: list[str] = []
    for part in _split_top_level(expr, _SET_OPERATOR):
        for side in _split_top_level(part, _COMPARISON):
            if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", side):
                continue
            m = re.fullmatch(r"absent(?:_over_time)?\((.*)\)", side, re.S)
            operands.append(m.group(1).strip() if m else side)
    return operands
