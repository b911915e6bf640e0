"""Alert rules through promtool, the dashboard's queries through promtool and a real Prometheus,
and that Prometheus scraping a running server and answering queries over its HTTP API."""
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from conftest import DEPLOY, free_port, get

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana/proco-serve.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_promtool_check_and_test_rules():
    assert PROMTOOL, "promtool missing (apt-get install prometheus)"
    subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=DEPLOY / "prometheus", check=True)
    subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus", check=True)


def test_dashboard_expressions_parse_with_promtool(tmp_path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump(rules))
    subprocess.run([PROMTOOL, "check", "rules", str(f)], check=True)


@pytest.fixture(scope="module")
def prometheus(server):
    assert PROMETHEUS, "prometheus missing (apt-get install prometheus)"
    tmp = Path(tempfile.mkdtemp(prefix="proco-prom-"))
    port = free_port()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "proco-serve", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [server.http]}]}]}))
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def query(url, expr):
    status, body = get(url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return status, (json.loads(body) if body else {})


def test_prometheus_scrapes_the_server(prometheus, server):
    # Some traffic so that request counters exist.
    for _ in range(3):
        get(server.url + "/v1/model")
    deadline = time.time() + 60
    while time.time() < deadline:
        status, r = query(prometheus, 'up{job="proco-serve"}')
        if status == 200 and r["data"]["result"] and r["data"]["result"][0]["value"][1] == "1":
            break
        time.sleep(0.5)
    else:
        pytest.fail("Prometheus never scraped the server")
    _, r = query(prometheus, "proco_ready")
    assert r["data"]["result"][0]["value"][1] == "1"
    _, r = query(prometheus, 'proco_execution_provider_info')
    assert r["data"]["result"][0]["metric"]["provider"] in ("cpu", "cuda")
    _, r = query(prometheus, 'sum(proco_http_requests_total{route="/v1/model", status="200"})')
    assert float(r["data"]["result"][0]["value"][1]) >= 3
    _, r = query(prometheus, "proco_queue_depth")
    assert r["data"]["result"], "the HPA's queue-depth metric is not scraped"
    # The alert rules load and evaluate against the live series; none fires on an idle server.
    status, body = get(prometheus + "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    n_rules = len(yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"][0]["rules"])
    assert sum(len(g["rules"]) for g in groups) == n_rules
    assert all(r.get("health") in ("ok", "unknown") for g in groups for r in g["rules"])
    firing = [r for g in groups for r in g["rules"] if r.get("state") == "firing"]
    assert not firing, firing


def test_dashboard_expressions_run_on_prometheus(prometheus):
    for e in dashboard_exprs():
        status, r = query(prometheus, e)
        assert status == 200 and r["status"] == "success", (e, r)
