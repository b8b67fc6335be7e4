"""The monitoring that ships in deploy/ and compose.yaml, checked with the real tools.

- the alert rules pass ``promtool check rules`` and their unit tests (``promtool test rules``),
  and the Prometheus config passes ``promtool check config``;
- a real Prometheus, run with that config (targets pointed at a real pod), loads the rules and
  answers every query of the Grafana dashboard with data during a burst;
- compose.yaml follows the Compose Specification's JSON schema, and every file it mounts exists.

Docker cannot run on these machines, so the stack itself is not started here.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import anyio
import httpx
import jsonschema_rs
import yaml
from test_prometheus import free_port, prometheus_command, query, require_prometheus, running

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "burst-nli.json"


def promtool() -> str:
    require_prometheus()  # the same package; skips or fails as the Prometheus tests do
    binary = shutil.which("promtool")
    assert binary is not None, "prometheus is installed but promtool is not on PATH"
    return binary


def dashboard_queries() -> dict[str, str]:
    """Every panel's query (and the worker variable's), ``$worker`` meaning every worker."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = {f"{panel['title']} [{target['refId']}]": target["expr"]
               for panel in dashboard["panels"] for target in panel["targets"]}  # fmt: skip
    for variable in dashboard["templating"]["list"]:
        metric = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
        assert metric is not None, variable["query"]
        queries[f"variable {variable['name']}"] = f"count by ({metric[2]}) ({metric[1]})"
    return {name: expr.replace("$worker", ".*") for name, expr in queries.items()}


def test_the_alert_rules_and_the_config_pass_promtool() -> None:
    binary = promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run([binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


async def test_every_dashboard_query_returns_data_from_a_real_prometheus_during_a_burst(pod_server, tmp_path) -> None:
    binary = require_prometheus()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    queries = dashboard_queries()
    port = free_port()
    burst = [{"operation": "classify", "headline": f"Fed Holds Rates, Take {i}"} for i in range(24)]
    async with pod_server() as base_url, httpx.AsyncClient(base_url=base_url, timeout=60) as pod:
        for scrape in config["scrape_configs"]:  # the pod as the compose file names it, and no gateway here
            targets = [base_url.removeprefix("http://")] if scrape["job_name"] == "burst-nli-pod" else []
            scrape["static_configs"] = [{"targets": targets}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        command = prometheus_command(binary, tmp_path / "prometheus.yml", tmp_path / "data", port)
        answered: dict[str, list] = {}
        with running(command, tmp_path / "prometheus.log"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as prometheus:
                with anyio.fail_after(120):
                    while len(answered) < len(queries):
                        async with anyio.create_task_group() as tg:  # a burst, again and again, as the panels watch
                            for job in burst:
                                tg.start_soon(functools.partial(pod.post, "/runsync", json={"input": job}))
                        await pod.post("/run", json={"input": {"operation": "classify"}})  # one rejection
                        for name, expression in queries.items():
                            if name not in answered:
                                try:
                                    result = await query(prometheus, expression)
                                except httpx.HTTPError:
                                    continue  # Prometheus still starting
                                if result:
                                    answered[name] = result
                rules = (await prometheus.get("/api/v1/rules")).json()["data"]["groups"]
    assert set(answered) == set(queries)
    assert sum(len(group["rules"]) for group in rules) == 8  # the alert rules loaded


def test_the_compose_file_follows_the_compose_specification() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    errors = [f"{'/'.join(map(str, error.instance_path))}: {error.message}"
              for error in jsonschema_rs.validator_for(schema).iter_errors(compose)]  # fmt: skip
    assert errors == []
    services = compose["services"]
    assert {"pod", "prometheus", "pushgateway", "grafana"} <= set(services)
    assert (ROOT / services["pod"]["build"]["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"compose mounts {source}, which is not in the repository"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/burst-nli.yml").read_text(encoding="utf-8"))
    mounted = {volume.split(":")[1] for volume in services["grafana"]["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounted  # Grafana finds the dashboard where it is mounted
