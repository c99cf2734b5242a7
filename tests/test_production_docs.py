"""The Grafana dashboard and the "Running in production" page follow the exported metrics.

``metrics.METRICS`` is the list of metric families the package exports (``test_metrics.py``
checks a real scrape against it). The dashboard may query only those, and queries every
one; the production page names every one, and its alert rules query only those.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from django_resilient_sessions import metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "django-resilient-sessions.json"
PRODUCTION = ROOT / "docs" / "production.md"
NAME = re.compile(r"\bresilient_sessions_[a-z_]+")
DECLARED = {metrics.PREFIX + name for name in metrics.METRICS}


def family(sample_name: str) -> str:
    """The family a queried series belongs to (a histogram's _bucket, _count, _sum)."""
    for suffix in ("_bucket", "_count", "_sum"):
        base = sample_name.removesuffix(suffix)
        if base != sample_name and base in DECLARED:
            return base
    return sample_name


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return found


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"] and target["refId"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_dashboard_queries_only_and_all_exported_metrics() -> None:
    queried = {
        family(name)
        for panel in panels()
        for target in panel["targets"]
        for name in NAME.findall(target["expr"])
    }
    queried |= {family(n) for v in dashboard()["templating"]["list"]
                for n in NAME.findall(json.dumps(v.get("query", "")))}  # fmt: skip
    assert queried - DECLARED == set()
    assert DECLARED - queried == set()


def test_the_production_page_lists_every_metric() -> None:
    text = PRODUCTION.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(resilient_sessions_[a-z_]+)` \|", text, flags=re.MULTILINE))
    assert rows == DECLARED


def test_the_alert_rules_query_only_exported_metrics() -> None:
    text = PRODUCTION.read_text(encoding="utf-8")
    [rules] = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    named = {family(name) for name in NAME.findall(rules)}
    assert named and named <= DECLARED


def test_a_metric_that_is_not_exported_would_be_caught() -> None:
    assert family("resilient_sessions_ledger_query_duration_seconds_bucket") in DECLARED
    assert family("resilient_sessions_loads_count") not in DECLARED
