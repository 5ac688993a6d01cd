"""deploy/: the alert rules, their unit tests, the example scrape configuration and the
Grafana dashboard, checked with Debian's promtool and against the metrics the code exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from farecore.fleet.metrics import METRICS, sample_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "farecore-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "farecore-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "farecore-fleet.json"
METRIC_NAME = re.compile(r"\bfarecore_[a-z0-9_]+")
#: The alerts a fleet operator was promised, by name (docs/monitoring.md).
REQUIRED = {
    "RevocationTableStale",
    "ClockOffset",
    "JournalBacklog",
    "JournalUploadOverdue",
    "ReaderDown",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: scripts/system-packages.sh installs prometheus"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_alert_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_every_alert_fires_in_its_unit_tests_and_they_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    alerts = {rule["alert"] for rule in rules()}
    assert alerts >= REQUIRED
    assert fired == alerts, f"alerts never shown firing: {sorted(alerts - fired)}"


def test_the_rules_name_only_exported_metrics_and_say_how_bad_it_is() -> None:
    exported = sample_names()
    for rule in rules():
        names = set(METRIC_NAME.findall(rule["expr"]))
        assert names <= exported, (rule["alert"], names - exported)
        assert names or rule["expr"].startswith("up{"), rule["alert"]  # the scrape's own
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_example_scrape_configuration_is_valid_and_names_the_rules() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    done = promtool("check", "config", config.name, cwd=config.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = yaml.safe_load(config.read_text())
    assert doc["rule_files"] == [RULES.name]
    jobs = {job["job_name"] for job in doc["scrape_configs"]}
    assert "farecore-gates" in jobs  # GateHostMetricsDown watches up{job="farecore-gates"}


def _dashboard_queries(node: Any) -> list[str]:
    """Every PromQL query in the dashboard: panel targets and template variables."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found += _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            found += _dashboard_queries(item)
    return found


def test_the_dashboard_shows_only_exported_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    queries = _dashboard_queries(board)
    assert len(queries) >= 20
    named = set()
    for query in queries:
        names = set(METRIC_NAME.findall(query))
        assert names, query
        assert names <= sample_names(), (query, names - sample_names())
        named |= names
    # What the dashboard promises to show is all there.
    for must in (
        "farecore_taps_total",
        "farecore_tap_duration_seconds_bucket",
        "farecore_reader_up",
        "farecore_revocation_table_created_timestamp_seconds",
        "farecore_package_version",
        "farecore_journal_pending_records",
        "farecore_journal_closed_days_pending",
        "farecore_journal_last_upload_timestamp_seconds",
        "farecore_clock_offset_seconds",
    ):
        assert must in named, must


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: each panel query becomes a recording rule,
    # with Grafana's variables replaced as Grafana would.
    board = json.loads(DASHBOARD.read_text())
    exprs = [
        q.replace("$__rate_interval", "1m").replace("$job", ".*")
        for q in _dashboard_queries(board)
        if not q.startswith("label_values(")
    ]
    exprs = [re.sub(r"\$(instance|terminal)", ".*", q) for q in exprs]
    doc = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dash:q{n}", "expr": e} for n, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(doc))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "farecore-fleet" and board["title"]
    assert isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in board["panels"]:
        box = p["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24 and box["h"] > 0, p["title"]
        for y in range(box["y"], box["y"] + box["h"]):  # no panel drawn over another
            for x in range(box["x"], box["x"] + box["w"]):
                assert (x, y) not in cells, (p["title"], cells[(x, y)])
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_documented(name: str) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    kind = METRICS[name][0]
    shown = f"{name}_total" if kind == "counter" else name
    assert f"`{shown}`" in docs
