"""Deploy files validate against their schemas and tools, and speak only of metrics the code exports."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest

from headguard.telemetry.metrics import Metrics, worker_registry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"]
K8S_FILES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.31.0"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "headguard.json"
RULES = DEPLOY / "prometheus" / "rules" / "headguard.yml"


def check_compose(*files: Path) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(cli), "--builtin-schema", "vendor.compose-spec", *map(str, files)],
                          capture_output=True, text=True)


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run deploy/ensure-prometheus.sh"
    return subprocess.run([binary, *args], capture_output=True, text=True)


def test_compose_files_match_the_compose_spec():
    result = check_compose(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_catches_a_bad_key(tmp_path):
    stack = yaml.safe_load(COMPOSE_FILES[0].read_text())
    stack["services"]["headguard"]["gpus_please"] = 1
    bad = tmp_path / "compose.yml"
    bad.write_text(yaml.safe_dump(stack))
    result = check_compose(bad)
    assert result.returncode != 0 and "gpus_please" in result.stdout


def test_compose_stack_has_every_part():
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    assert {"headguard", "worker", "redis", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]  # job state survives a restart
    assert services["headguard"]["environment"]["HEADGUARD_REDIS_URL"].startswith("redis://redis:")


def k8s_documents() -> list[tuple[str, dict]]:
    return [(f.name, doc) for f in K8S_FILES for doc in yaml.safe_load_all(f.read_text()) if doc]


@pytest.mark.parametrize("name,doc", k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_manifests_match_their_schemas(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kubernetes_check_catches_a_bad_field():
    deployment = next(doc for _, doc in k8s_documents() if doc["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_guard_replicas_are_ready_only_on_ready_and_scraped():
    guard = next(doc for _, doc in k8s_documents() if doc["kind"] == "Deployment"
                 and doc["metadata"]["name"] == "headguard")
    pod = guard["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_prometheus_config_and_rules_pass_promtool(tmp_path):
    result = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    in_cluster = yaml.safe_load((DEPLOY / "kubernetes" / "70-prometheus.yaml").read_text())["data"]["prometheus.yml"]
    config = yaml.safe_load(in_cluster)
    config.pop("rule_files")  # they live in the cluster; the same rules are checked above
    for job in config["scrape_configs"]:  # Debian's promtool is built without Kubernetes discovery
        job["static_configs"] = [{"targets": ["10.0.0.1:8000"]}] if job.pop("kubernetes_sd_configs") else []
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported_names() -> set[str]:
    metrics = Metrics()
    metrics.watch_jobs(lambda: [{"id": "j", "status": "running", "progress": {"fraction": 0.5}}])
    text = metrics.render().decode() + generate_latest(worker_registry(lambda: [], lambda: False)).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_dashboard_and_rules_only_use_exported_metrics():
    known = exported_names()
    for expr in dashboard_exprs() + rule_exprs():
        for name in re.findall(r"\bheadguard_[a-z_]+\b", expr):
            assert name in known, f"{name} (in {expr!r}) is not exported by headguard"


def test_dashboard_is_provisionable():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Detection rate", "Decisions per second by verdict", "Score distribution", "Repair jobs",
            "Active weights version per replica"} <= titles


def test_dockerfile_builds_cpu_and_cuda_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG DEVICE=cpu" in text
    assert re.search(r"^FROM torch-\$\{DEVICE\} AS runtime$", text, flags=re.M)
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M))
    assert {"torch-cpu", "torch-cuda", "runtime"} <= stages
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, flags=re.M)
    assert not re.search(r"^(ENV|ARG) .*(TOKEN|KEY|PASSWORD|SECRET)", text, flags=re.M)
