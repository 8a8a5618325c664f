"""compose.yaml's monitoring: the Prometheus configuration and alerts pass promtool, the Grafana
dashboard is the one freshrank/grafana.py builds and decodes through Grafana's own models, and
every freshrank metric the dashboard and the alerts ask for is one the updater exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client.parser import text_string_to_metric_families

from freshrank import grafana
from tests.unit.updater.fakes import blank_status
from updater.metrics import UpdaterMetrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool (Debian's prometheus package) checks the configuration: `make test` installs it"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_the_prometheus_configuration_and_its_alerts_pass_promtool() -> None:
    checked = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout and "rules.yml" in checked.stdout  # the alerts were read too


def test_every_dashboard_query_is_promql_that_promtool_parses(tmp_path: Path) -> None:
    exprs = [e for queries in grafana.QUERIES.values() for e, _ in queries] + list(
        grafana.ANNOTATIONS.values()
    )
    # Grafana fills $__rate_interval in before it asks Prometheus.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"freshrank:dashboard_{i}", "expr": e.replace("$__rate_interval", "1m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout
    broken = tmp_path / "broken.json"
    broken.write_text(
        json.dumps({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[1m])"}]}]})
    )
    assert promtool("check", "rules", str(broken)).returncode != 0  # the check can fail


def test_the_committed_dashboard_is_the_built_one_and_decodes_through_grafanas_models() -> None:
    committed = ROOT / grafana.DASHBOARD_FILE
    assert committed.read_text() == grafana.render(), (
        "run `python -m freshrank.grafana` and commit the result"
    )
    plugins.register_default_plugins()  # panel options decode into each panel type's own model
    data = json.loads(committed.read_text())
    decoded = Dashboard.from_json(data)
    assert json.loads(JSONEncoder(sort_keys=True).encode(decoded)) == data
    kinds = {p["type"] for p in data["panels"]}
    assert {"timeseries", "stat", "bargauge", "row"} <= kinds
    uids = {p["datasource"]["uid"] for p in data["panels"] if p.get("datasource")}
    provisioned = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert uids == {grafana.DATASOURCE.uid} and f"uid: {grafana.DATASOURCE.uid}" in provisioned


def exported_names() -> set[str]:
    """Every sample name the updater's endpoint can show (counters with _total, histograms with
    _bucket/_sum/_count)."""
    status = blank_status(
        dead_letters_by_reason={"not_json": 1},
        consumer_lag_by_partition={"events:0": 3},
        dependencies={"kafka": {"ok": True, "outages": 0}},
        vocab_sizes={"item": 1},
        vocab_evictions={"item": 0},
        served_holdout={"auc": 0.7, "logloss": 0.4},
        served_version=1,
        live_version=1,
        prequential_auc=0.6,
        prequential_logloss=0.5,
        consumer_lag=3,
        pending_impressions=0,
        queue_batches=0,
        holdout_samples=0,
    )
    metrics = UpdaterMetrics(lambda: status)
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_the_dashboard_and_the_alerts_ask_only_for_metrics_the_updater_exports(source: str) -> None:
    text = (
        json.dumps([grafana.QUERIES, grafana.ANNOTATIONS])
        if source == "dashboard"
        else (DEPLOY / "prometheus" / "rules.yml").read_text()
    )
    asked = set(re.findall(r"\bfreshrank_[a-z_]+", text))
    assert asked, source
    missing = asked - exported_names()
    assert not missing, f"{source} asks for metrics the updater does not export: {sorted(missing)}"
