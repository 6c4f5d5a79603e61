"""deploy/grafana/ftsup-dashboard.json: valid JSON, datasource as a variable, and every query reads
only series (and labels) that SupervisorMetrics really exports; with the real Prometheus, every
query parses and runs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from supervisor.report.metrics import SupervisorMetrics
from tests.prometheus.conftest import Prometheus

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ftsup-dashboard.json"
SERIES = re.compile(r"\bftsup_[a-z_]+\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHER = re.compile(r"\b(ftsup_[a-z_]+)\{([^}]*)\}")
PROMQL_WORDS = {"le"}  # the histogram bucket label


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, as SupervisorMetrics exposes them."""
    registry = CollectorRegistry()
    SupervisorMetrics(registry, ["logs", "metrics"], ["gpu-fallen-off-bus"], sinks=["log"], jobs=["llm"])
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def test_the_dashboard_is_valid_and_uses_a_datasource_variable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_query_reads_only_series_ftsup_exports() -> None:
    doc = json.loads(DASHBOARD.read_text())
    series = exported()
    used: set[str] = set()
    for title, expr in queries(doc):
        names = set(SERIES.findall(expr))
        assert names, f"{title}: {expr} reads no ftsup series"
        unknown = names - set(series)
        assert not unknown, f"{title}: {sorted(unknown)} are not exported (known: {sorted(series)})"
        used |= names
        labels = set().union(*(series[n] for n in names)) | PROMQL_WORDS
        for group in BY.findall(expr):
            grouped = {g.strip() for g in group.split(",") if g.strip()}
            assert grouped <= labels, f"{title}: by ({group}) names labels the series lack"
        for name, matchers in MATCHER.findall(expr):
            for label in re.findall(r"([a-zA-Z_]+)\s*=~?", matchers):
                assert label in series[name], f"{title}: {name} has no label {label!r}"
    # The panels the issue asks for: incidents, actions, detection latency, source up / lag,
    # budget left, ETTR, alert deliveries.
    for name in (
        "ftsup_incidents_total",
        "ftsup_actions_total",
        "ftsup_detection_latency_seconds_bucket",
        "ftsup_source_up",
        "ftsup_source_lag_seconds",
        "ftsup_restart_budget_left",
        "ftsup_ettr",
        "ftsup_alerts_total",
    ):
        assert name in used, f"no panel reads {name}"


@pytest.mark.prometheus
def test_every_query_runs_on_a_real_prometheus(prometheus_server: Callable[[int], Prometheus]) -> None:
    """Grafana's variables substituted, each expression is valid PromQL for Prometheus's own parser."""
    from tests.conftest import free_port

    prom = prometheus_server(free_port())  # nothing to scrape: the queries only have to parse and run
    doc = json.loads(DASHBOARD.read_text())
    for title, expr in queries(doc):
        concrete = expr.replace("$__rate_interval", "1m").replace("$training_job", ".*")
        prom.query(concrete)  # raises on a parse error (HTTP 400)
        assert "$" not in concrete, title
