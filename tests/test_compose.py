"""docker-compose.yml and Dockerfile agree with the config loader, the example
config and the Grafana provisioning."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "streams" / "examples" / "driftwarden.yaml"
GRAFANA_DATASOURCE = ROOT / "dashboards" / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
GRAFANA_PROVIDER = ROOT / "dashboards" / "grafana" / "provisioning" / "dashboards" / "driftwarden.yaml"

SERVICES = {"kafka", "influxdb", "grafana", "worker", "retrain-worker", "simulator"}
WORKER_ENV = {
    "DRIFTWARDEN_KAFKA_BOOTSTRAP": "kafka:9092",
    "DRIFTWARDEN_INFLUX_URL": "http://influxdb:8086",
    "DRIFTWARDEN_INFLUX_ORG": "ml",
    "DRIFTWARDEN_INFLUX_BUCKET": "monitoring",
}
TOKEN = "${DRIFTWARDEN_INFLUX_TOKEN:-driftwarden-dev-token}"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def env_overrides():
    try:
        from streams.config import ENV_OVERRIDES
    except ImportError as exc:
        pytest.skip(f"streams.config.ENV_OVERRIDES is not importable yet ({exc}); the config loader defines it")
    return ENV_OVERRIDES


def env(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def published(service: dict) -> set[str]:
    return {str(p) for p in service.get("ports", [])}


def test_services(services):
    assert set(services) == SERVICES


def test_ports(services):
    assert "8086:8086" in published(services["influxdb"])
    assert "3000:3000" in published(services["grafana"])
    assert "29092:29092" in published(services["kafka"])
    for name in ("worker", "retrain-worker", "simulator"):
        assert not published(services[name]), f"{name} needs no published port"


def test_kafka_is_kraft_with_a_listener_for_containers(services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.8.0"
    e = env(kafka)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    advertised = dict(item.split("://", 1) for item in e["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://", 1) for item in e["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert "kafka:9092" in advertised.values(), "containers reach the broker at kafka:9092"
    for name in advertised:
        assert name in listeners and name in protocols
    assert e["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", e["CLUSTER_ID"]), "CLUSTER_ID must be a base64 UUID"
    assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_influxdb_is_initialised(services):
    influx = services["influxdb"]
    assert influx["image"].startswith("influxdb:2.7")
    e = env(influx)
    assert e["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert e["DOCKER_INFLUXDB_INIT_ORG"] == "ml"
    assert e["DOCKER_INFLUXDB_INIT_BUCKET"] == "monitoring"
    assert e["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == TOKEN


def test_worker_runs_the_example_config_with_the_loaders_env_names(services, env_overrides):
    worker = services["worker"]
    assert worker["command"] == ["driftwarden", "worker", "-c", "/app/streams/examples/driftwarden.yaml"]
    assert worker["build"]["dockerfile"] == "Dockerfile"
    e = env(worker)
    unknown = sorted(set(e) - set(env_overrides))
    assert not unknown, f"the config loader does not read {unknown}"
    for name, value in WORKER_ENV.items():
        assert e[name] == value, name
    assert e["DRIFTWARDEN_INFLUX_TOKEN"] == TOKEN
    assert env_overrides["DRIFTWARDEN_KAFKA_BOOTSTRAP"] == ("kafka", "bootstrap")
    assert env_overrides["DRIFTWARDEN_INFLUX_ORG"] == ("influx", "org")
    assert env_overrides["DRIFTWARDEN_INFLUX_BUCKET"] == ("influx", "bucket")


@pytest.mark.parametrize("name", ["retrain-worker", "simulator"])
def test_other_driftwarden_services_use_only_loader_env_names(services, env_overrides, name):
    e = env(services[name])
    assert not sorted(k for k in e if k.startswith("DRIFTWARDEN_") and k not in env_overrides)
    assert e["DRIFTWARDEN_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_retrain_worker_and_simulator_commands(services):
    assert services["retrain-worker"]["command"][:2] == ["driftwarden", "retrain-worker"]
    assert services["simulator"]["command"][:2] == ["driftwarden", "simulate"]
    assert services["simulator"].get("profiles") == ["simulator"], "the simulator is optional"


def test_workers_wait_for_healthy_dependencies(services):
    for name, needs in [("worker", {"kafka", "influxdb"}), ("retrain-worker", {"kafka"}), ("grafana", {"influxdb"})]:
        depends = services[name]["depends_on"]
        assert needs <= set(depends), name
        for dep in needs:
            assert depends[dep]["condition"] == "service_healthy"
            assert "healthcheck" in services[dep]


def test_org_and_bucket_agree_with_the_example_config(services):
    if not EXAMPLE_CONFIG.exists():
        pytest.skip("streams/examples/driftwarden.yaml does not exist yet (the config author writes it)")
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8")) or {}
    influx = config.get("influx")
    if not influx:
        pytest.skip("streams/examples/driftwarden.yaml has no influx section yet")
    assert influx["org"] == env(services["influxdb"])["DOCKER_INFLUXDB_INIT_ORG"] == env(services["worker"])[
        "DRIFTWARDEN_INFLUX_ORG"]
    assert influx["bucket"] == env(services["influxdb"])["DOCKER_INFLUXDB_INIT_BUCKET"] == env(
        services["worker"])["DRIFTWARDEN_INFLUX_BUCKET"]
    assert "token" not in influx, "the token comes from the environment only"


def test_example_config_loads_with_the_compose_environment(services):
    try:
        from streams.config import Config
    except ImportError as exc:
        pytest.skip(f"streams.config.Config is not importable yet ({exc})")
    if not EXAMPLE_CONFIG.exists():
        pytest.skip("streams/examples/driftwarden.yaml does not exist yet")
    environ = {name: ("driftwarden-dev-token" if value == TOKEN else value)
               for name, value in env(services["worker"]).items()}
    config = Config.load(EXAMPLE_CONFIG, environ=environ)
    assert config.kafka.bootstrap == "kafka:9092"
    assert config.influx.url == "http://influxdb:8086"
    assert (config.influx.org, config.influx.bucket) == ("ml", "monitoring")


def test_grafana_datasource_points_at_the_influxdb_service(services):
    datasource = yaml.safe_load(GRAFANA_DATASOURCE.read_text(encoding="utf-8"))["datasources"][0]
    url = urlparse(datasource["url"])
    assert url.hostname == "influxdb" and "influxdb" in services
    assert f"{url.port}:{url.port}" in published(services["influxdb"])
    assert datasource["jsonData"]["organization"] == env(services["influxdb"])["DOCKER_INFLUXDB_INIT_ORG"]
    assert datasource["jsonData"]["defaultBucket"] == env(services["influxdb"])["DOCKER_INFLUXDB_INIT_BUCKET"]
    token_ref = datasource["secureJsonData"]["token"]
    variable = re.fullmatch(r"\$\{?(\w+)\}?", token_ref)
    assert variable, "the Grafana token comes from the environment"
    assert env(services["grafana"])[variable.group(1)] == TOKEN


def test_grafana_mounts_provisioning_and_dashboards(services):
    mounts = {}
    for volume in services["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/grafana/provisioning"
    provider = yaml.safe_load(GRAFANA_PROVIDER.read_text(encoding="utf-8"))["providers"][0]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == "./dashboards/grafana"
    assert (ROOT / mounts[dashboards_dir] / "driftwarden.json").exists()


def test_dockerfile_installs_the_package():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.(\s|$)", text)
    assert re.search(r"^USER (?!root)\S+", text, re.M), "run as a non-root user"
