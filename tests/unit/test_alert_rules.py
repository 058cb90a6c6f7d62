"""Monitoring assets: the Prometheus alert rules (checked and unit-tested with promtool) and the
Grafana dashboard, both held to the metric contract in appliance/health/METRICS.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/<kind>/ is two down)
HEALTH = ROOT / "appliance" / "health"
ALERTS = HEALTH / "alerts.yml"
ALERTS_TEST = HEALTH / "alerts_test.yml"
DASHBOARD = HEALTH / "dashboard.json"
METRICS_MD = HEALTH / "METRICS.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian package prometheus, see .ci/monitoring-packages)")

EXPECTED_ALERTS = {
    "ApplianceDown", "DataDiskMissing", "ApplianceDegraded", "CapacityHigh",
    "CapacityCritical", "BackupMissed", "ServiceLevelAtRisk", "ReplicationLagging",
    "TunnelDown", "DataDiskIOErrors", "VerifyFoundDamage", "RestoreStartSlow",
    "BackupWindowMissed", "NotificationsNotDraining", "FilesNotBackedUp", "SnapshotSuspicious",
    "RtoAtRisk",
}

# What may appear in an expression besides metric names.
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week", "delta",
    "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10",
    "log2", "max_over_time", "min_over_time", "minute", "month", "predict_linear",
    "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn",
    "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "time", "timestamp", "vector", "year",
    # aggregations
    "avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# `by (...)`, `on (...)` etc. list label names, not metrics.
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def contract_metrics() -> set[str]:
    """Every series name METRICS.md allows (histograms expose _bucket, _sum and _count)."""
    names: set[str] = set()
    for line in METRICS_MD.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("rdr_"):
            continue
        name, kind = cells[0], cells[1]
        names.add(name)
        if kind.startswith("histogram"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\$\{?\w+\}?", "", s)  # $instance, ${datasource}, $__rate_interval
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range selectors
    s = LABEL_LISTS.sub("", s)
    s = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", s, flags=re.IGNORECASE)  # numbers
    names = set()
    for m in IDENT.finditer(s):
        word = m.group(0)
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if s[m.end():].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
            continue
        names.add(word)
    return names


def test_metric_name_parser() -> None:
    assert metric_names('up{job="rdr-appliance", instance=~"$instance"} == 0') == {"up"}
    assert metric_names(
        "histogram_quantile(0.99, sum by (instance, le) "
        '(rate(rdr_restore_start_latency_seconds_bucket{instance=~"$instance"}'
        "[$__rate_interval]))) > 1800") == {"rdr_restore_start_latency_seconds_bucket"}
    assert metric_names("rdr_a > 24 * 3600 and on(instance, job) rdr_b == 1") == {
        "rdr_a", "rdr_b"}
    assert "rdr_bogus" not in contract_metrics()
    assert {"rdr_info", "rdr_backups_total", "rdr_restore_start_latency_seconds_bucket"} <= (
        contract_metrics())


# --- alert rules ---------------------------------------------------------------------------


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    (group,) = doc["groups"]
    assert group["name"] == "rdr-appliance"
    return group["rules"]


def test_alert_rules_follow_the_contract() -> None:
    allowed = contract_metrics() | {"up"}
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert metric_names(rule["expr"]) <= allowed, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, name
        assert "{{ $labels.instance }}" in annotations["summary"], name
        assert "{{ $labels.instance }}" in annotations["description"], name
        if "host" in rule["expr"] or "rdr_host_" in rule["expr"]:
            assert "{{ $labels.host }}" in annotations["summary"], name
    severities = {r["labels"]["severity"] for r in rules if r["alert"] == "ReplicationLagging"}
    assert severities == {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


@needs_promtool
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_promtool_unit_tests() -> None:
    r = promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_unit_tests_cover_every_alert() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else silent).add(t["alertname"])
            for alert in t.get("exp_alerts") or []:
                assert "severity" in alert["exp_labels"], t["alertname"]
                assert set(alert["exp_annotations"]) == {"summary", "description"}
    assert fires == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


# --- dashboard -----------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))  # collapsed rows nest their panels
    return out


def query_panels() -> list[dict]:
    return [p for p in all_panels(dashboard()["panels"]) if p.get("type") != "row"]


def test_dashboard_variables() -> None:
    d = dashboard()
    assert 30 <= d["schemaVersion"] <= 39
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query"
    assert inst["datasource"]["uid"] == "${datasource}"
    query = inst["query"]["query"] if isinstance(inst["query"], dict) else inst["query"]
    assert query == "label_values(rdr_info, instance)"


def test_dashboard_panels() -> None:
    panels = query_panels()
    assert panels
    ids = [p["id"] for p in all_panels(dashboard()["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    allowed = contract_metrics() | {"up"}
    used: set[str] = set()
    for p in panels:
        title = p.get("title", "").strip()
        assert title, f"panel {p['id']} has no title"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}, title
        assert p["targets"], title
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", title
            expr = t["expr"]
            names = metric_names(expr)
            assert names, f"{title}: {expr!r} selects no metric"
            assert names <= allowed, f"{title}: not in METRICS.md: {names - allowed}"
            if names != {"up"}:
                assert '$instance' in expr, f"{title}: {expr!r} ignores the instance variable"
            used |= names
    # the panels the dashboard is for
    assert {
        "rdr_info", "rdr_degraded", "rdr_disk_used_ratio", "rdr_disk_used_bytes",
        "rdr_protected_bytes", "rdr_billable_bytes", "rdr_minimum_use_floor_bytes",
        "rdr_host_last_success_timestamp_seconds", "rdr_host_window_success_ratio",
        "rdr_ingest_bytes_total", "rdr_replication_lag_seconds",
        "rdr_replication_pending_bytes", "rdr_tunnel_up", "rdr_link_up",
        "rdr_data_disk_present", "rdr_data_disk_io_errors_total", "rdr_verify_damaged_chunks",
        "rdr_restore_start_latency_seconds_bucket",
    } <= used


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool has no offline query check, so check each query as a recording rule."""
    rules = []
    for i, p in enumerate(query_panels()):
        for t in p["targets"]:
            expr = (t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1d")
                    .replace("$instance", ".+"))
            rules.append({"record": f"dashboard:panel{i}:{t['refId']}", "expr": expr})
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
