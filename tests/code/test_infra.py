"""infra/ says what `kaizen stack up` does: the same commands, versions and environment variable
names; every published port on loopback; no secret committed. (No Docker engine runs here, so
the compose file and the manifest are checked against the code, not started.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tasks import stack

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"]
K8S = list(yaml.safe_load_all((INFRA / "k8s-worker.yaml").read_text()))
# The compose network's names and ports for what `stack up` puts on 127.0.0.1.
PORTS = stack.Ports(postgres=5432, s3=9000, mlflow=5000, prefect=4200)
URLS = {"s3": "http://minio:9000", "prefect_db": "postgresql+asyncpg://kaizen@postgres:5432/prefect", "shared_db": ""}


def _worker_container() -> dict:
    deployment = next(d for d in K8S if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_compose_runs_the_commands_kaizen_stack_up_runs():
    expected = stack.service_commands("0.0.0.0", PORTS, "postgresql://kaizen@postgres:5432/mlflow")
    for name in ("mlflow", "prefect", "worker"):
        assert COMPOSE[name]["command"] == expected[name], name
    assert _worker_container()["command"] == expected["worker"]


def test_services_and_worker_get_the_variables_kaizen_stack_up_sets():
    for name, variables in stack.service_env(URLS).items():
        assert set(variables) <= set(COMPOSE[name]["environment"]), name
    worker_env = set(COMPOSE["worker"]["environment"])
    assert set(stack.CLIENT_ENV) | set(stack.CREDENTIALS) <= worker_env
    container = _worker_container()
    config_map = next(d for d in K8S if d["kind"] == "ConfigMap")["data"]
    k8s_env = {e["name"] for e in container["env"]} | set(config_map)
    assert set(stack.CLIENT_ENV) | set(stack.CREDENTIALS) | set(stack.service_env(URLS)["worker"]) <= k8s_env
    assert COMPOSE["worker"]["environment"]["KAIZEN_DATA__REMOTE__URL"] == stack.DATA_REMOTE
    assert stack.ARTIFACTS in COMPOSE["mlflow"]["command"]


def test_images_carry_the_locked_versions():
    lock = dict(
        line.split("==") for line in (INFRA.parent / "requirements.lock").read_text().splitlines() if "==" in line
    )
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "pip install -r requirements.lock" in dockerfile and "FROM python:3.11" in dockerfile
    for name in ("mlflow", "prefect", "worker"):
        assert COMPOSE[name]["build"]["dockerfile"] == "infra/Dockerfile"
    assert _worker_container()["image"] == COMPOSE["worker"]["image"]
    prefect_yaml = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    assert prefect_yaml["prefect-version"] == lock["prefect"]


def test_every_published_port_binds_loopback():
    published = [port for service in COMPOSE.values() for port in service.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published


def test_no_secret_is_committed():
    secret_key = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|TOKEN)", re.I)
    for name, service in COMPOSE.items():
        for key, value in (service.get("environment") or {}).items():
            if secret_key.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), f"{name}: {key} is written out"
    for entry in _worker_container()["env"]:
        if secret_key.search(entry["name"]):
            assert "secretKeyRef" in entry.get("valueFrom", {}), entry["name"]
    for path in INFRA.iterdir():
        text = path.read_text()
        assert not re.search(r"postgres(ql)?(\+\w+)?://[^/\s:@]+:[^@\s]+@", text), f"{path.name}: password in a URL"
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path.name}: an AWS key id"
