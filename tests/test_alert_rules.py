"""The operations kit's static files: alert rules (promtool), the Grafana dashboard and its provisioning.

promtool comes with Debian's `prometheus` package (scripts/setup.d/prometheus.sh). Without it these tests
skip, except under CI (env CI set), where a missing tool is a broken setup and fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "compose" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "compose" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "drainctl.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "drainctl.yml"

#: The alerts the operations kit promises (docs/observability.md).
ALERTS = {
    "DrainctlDrainPastDeadline", "DrainctlRolloutFailed", "DrainctlWorkerSilent", "DrainctlNoEvents",
    "DrainctlEventsDropped", "DrainctlEventsMalformed", "DrainctlConfigReloadRejected", "DrainctlHostnameCollision",
    "DrainctlWorkerIgnoresRemoteControl", "DrainctlConsumerTimeoutNear", "DrainctlPoolAtMaxWithGrowingBacklog",
    "DrainctlEngineUnreachable",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is missing: scripts/setup.d/prometheus.sh installs Debian's prometheus package"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules() -> None:
    result = run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_defined_and_unit_tested() -> None:
    rules = RULES.read_text()
    defined = set(re.findall(r"^\s*- alert:\s*(\S+)", rules, re.MULTILINE))
    assert defined == ALERTS
    tested = set(re.findall(r"alertname:\s*(\S+)", RULE_TESTS.read_text()))
    assert tested == ALERTS
    # Every alert is asserted to fire at least once, not only to stay quiet.
    for name in ALERTS:
        blocks = re.findall(rf"alertname: {name}\n\s*exp_alerts:\s*\n\s*- exp_labels", RULE_TESTS.read_text())
        assert blocks, f"{name} is never expected to fire in {RULE_TESTS.name}"


# --------------------------------------------------------------------------- Grafana


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "drainctl"
    all_panels = panels(board)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert "drainctl_" in target["expr"], (panel["title"], target["expr"])
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    annotations = [a for a in board["annotations"]["list"] if a.get("expr")]
    assert any("drainctl_rollouts_finished_total" in a["expr"] for a in annotations)
    # Panels must not overlap on the grid (rows are 24 units wide).
    cells: set[tuple[int, int]] = set()
    for panel in all_panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))


def test_dashboard_covers_what_the_issue_asks() -> None:
    text = DASHBOARD.read_text()
    for needle in (
        "drainctl_pool_workers", "drainctl_workers", 'drainctl_worker_tasks{', "running", "reserved",
        "histogram_quantile", "drainctl_drain_duration_seconds_bucket", "drainctl_rollouts_finished_total",
        "drainctl_rollouts_in_progress", "drainctl_events_consumed_total", "drainctl_events_malformed_total",
        "drainctl_events_dropped_total", "drainctl_reconciles_total",
    ):
        assert needle in text, needle


def test_dashboard_has_an_autoscaling_row() -> None:
    board = dashboard()
    rows = [p for p in board["panels"] if p["type"] == "row"]
    row = next(r for r in rows if r["title"] == "Autoscaling")
    below = [p for p in board["panels"] if p["type"] != "row" and p["gridPos"]["y"] == row["gridPos"]["y"] + 1]
    exprs = "\n".join(t["expr"] for p in below for t in p["targets"])
    for needle in ("drainctl_pool_desired_replicas", 'drainctl_pool_workers{', 'status="ready"',
                   "drainctl_pool_min_replicas", "drainctl_pool_max_replicas", "drainctl_pool_backlog_messages",
                   "increase(drainctl_pool_scale_events_total"):
        assert needle in exprs, needle


def test_dashboard_sets_old_and_new_versions_side_by_side() -> None:
    board = dashboard()
    row = next(p for p in board["panels"] if p["type"] == "row" and p["title"].startswith("Canary"))
    below = [p for p in board["panels"] if p["type"] != "row" and p["gridPos"]["y"] == row["gridPos"]["y"] + 1]
    exprs = "\n".join(t["expr"] for p in below for t in p["targets"])
    for needle in ("sum by (pool, version) (rate(drainctl_pool_tasks_total", 'outcome=~"failed|rejected"',
                   "sum by (pool, version, le) (rate(drainctl_pool_task_runtime_seconds_bucket",
                   "drainctl_canary_step", "drainctl_canary_tasks_seen"):
        assert needle in exprs, needle


def test_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    datasources = DATASOURCES.read_text()
    assert "url: http://127.0.0.1:9090" in datasources  # host networking: no service names
    assert "type: prometheus" in datasources
    assert re.search(r"^\s*uid: prometheus\s*$", datasources, re.MULTILINE)
    providers = PROVIDERS.read_text()
    assert "type: file" in providers
    # The provider's path is where a compose file mounts grafana/dashboards.
    assert re.search(r"^\s*path: /var/lib/grafana/dashboards\s*$", providers, re.MULTILINE)
