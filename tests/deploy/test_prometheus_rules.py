"""The chart's PrometheusRule: `promtool check rules` on the rendered rules and `promtool test rules`
with a unit test for every alert (tests/deploy/prometheus/alerts_test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import MONITORING_API, render, rule_expressions, rules_from_manifests, tool

TESTS = Path(__file__).resolve().parent / "prometheus" / "alerts_test.yaml"


@pytest.fixture(scope="module")
def rules(helm_env: dict[str, str]) -> dict[str, Any]:
    return rules_from_manifests(render(helm_env, "--set", "metrics.prometheusRule.enabled=true", *MONITORING_API))


@pytest.fixture
def rules_dir(rules: dict[str, Any], tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return tmp_path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("promtool")), *args], capture_output=True, text=True, timeout=300)


def test_promtool_accepts_the_rules(rules_dir: Path, rules: dict[str, Any]) -> None:
    proc = promtool("check", "rules", str(rules_dir / "rules.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = sum(len(g["rules"]) for g in rules["groups"])
    assert f"SUCCESS: {count} rules found" in proc.stdout


def test_alert_unit_tests_pass(rules_dir: Path) -> None:
    proc = promtool("test", "rules", str(rules_dir / TESTS.name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test(rules: dict[str, Any]) -> None:
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {"CoachForgeTrainingJobsFailing", "CoachForgeEvalGraderErrors", "CoachForgeEventsDeadLettered",
                      "CoachForgeOutboxBacklog", "CoachForgeFallbackRateHigh",
                      "CoachForgeInferenceErrorRateHigh",
                      "CoachForgeInferenceLatencyHigh", "CoachForgeTimeToFirstTokenHigh", "CoachForgeCostBurnRateHigh",
                      "CoachForgeEngineDown", "CoachForgeEngineMissing", "CoachForgeEngineSaturated",
                      "CoachForgeTrainingQueueGrowing", "CoachForgeServiceDown"}
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == alerts, f"alerts never seen firing: {sorted(alerts - firing)}"
    assert quiet == alerts, f"no quiet case: {sorted(alerts - quiet)}"


def test_rules_follow_the_naming_conventions(rules: dict[str, Any]) -> None:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                level, metric, operation = rule["record"].split(":")
                assert level == "coachforge" and metric and operation, rule["record"]
            else:
                assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    # Alerts read the recorded series where one exists (the dashboards do too).
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    used = {name for _, expr in rule_expressions(rules) for name in recorded if name in expr}
    dashboards_only = {"coachforge:inference_request_seconds:p50_5m", "coachforge:inference_ttft_seconds:p50_5m",
                       "coachforge:inference_tokens:rate5m", "coachforge:training_tokens_per_second:sum",
                       # Its alert reads the counter: an alert reading another group's series may see this
                       # tick's value or the previous one's (groups run concurrently), and its text shows it.
                       "coachforge:eval_grader_errors:increase1h"}
    assert used == recorded - dashboards_only
