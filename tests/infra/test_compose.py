"""docker-compose.yml checked against the code without Docker: commands, settings, ports, services' wiring."""
from __future__ import annotations

import re
import shlex
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers.paths import REPO
from tests.infra.known import interpolate_all, parse_tide_args, unknown_variables

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = interpolate_all(COMPOSE["services"])  # as compose runs them with no .env: every default applies
TIDE_SERVICES = sorted(name for name, service in SERVICES.items()
                       if service.get("build", {}).get("dockerfile") == "infra/Dockerfile")
COMMANDED = [name for name in TIDE_SERVICES if "command" in SERVICES[name]]


def _container_ports(service: dict) -> set[int]:
    """The container side of each published port ("127.0.0.1:8000:8000", "8000:8000" or "8000")."""
    return {int(str(spec).split(":")[-1].split("/")[0]) for spec in service.get("ports", [])}


def _healthcheck_url(service: dict) -> str:
    test = " ".join(service["healthcheck"]["test"])
    return re.search(r"https?://[^'\" ]+", test).group(0)


def _args(name: str):
    return parse_tide_args(SERVICES[name]["command"])


def test_the_stack_has_every_service():
    assert {"redis", "minio", "create-bucket", "api", "worker", "worker-gpu", "beat", "flower"} <= set(SERVICES)
    assert {"api", "worker", "worker-gpu", "beat"} <= set(TIDE_SERVICES)


@pytest.mark.parametrize("name", COMMANDED)
def test_each_command_is_a_real_tide_subcommand(name):
    assert _args(name).command == SERVICES[name]["command"][0]


@pytest.mark.parametrize("name", TIDE_SERVICES)
def test_each_tide_variable_is_a_known_setting(name):
    assert unknown_variables(SERVICES[name].get("environment", {})) == []


def test_api_port_agrees_in_command_healthcheck_and_published_port():
    api = SERVICES["api"]
    args = _args("api")
    url = urlsplit(_healthcheck_url(api))
    assert args.host == "0.0.0.0", "inside a container the API must listen beyond loopback"
    assert url.port == args.port and url.path == "/readyz"
    assert _container_ports(api) == {args.port}


def test_redis_and_s3_urls_point_at_the_compose_services():
    env = SERVICES["api"]["environment"]
    redis = urlsplit(env["TIDE_REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    assert 6379 in _container_ports(SERVICES["redis"])
    s3 = urlsplit(env["AWS_ENDPOINT_URL"])
    assert (s3.hostname, s3.port) == ("minio", 9000)
    assert 9000 in _container_ports(SERVICES["minio"])
    assert urlsplit(SERVICES["flower"]["environment"]["CELERY_BROKER_URL"]).netloc == redis.netloc


def test_every_tide_service_shares_one_environment():
    envs = [SERVICES[name].get("environment") for name in TIDE_SERVICES]
    assert all(env == envs[0] for env in envs)


def test_storage_bucket_is_the_one_created_and_minio_credentials_match():
    env = SERVICES["api"]["environment"]
    script = SERVICES["create-bucket"]["entrypoint"][-1]
    created = re.search(r"mc mb \S*\s*local/([\w.-]+)", script).group(1)
    assert urlsplit(env["TIDE_STORAGE"]).netloc == created
    minio = SERVICES["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio["MINIO_ROOT_USER"],
                                                                        minio["MINIO_ROOT_PASSWORD"])
    assert SERVICES["create-bucket"].get("restart") == "no"


def test_redis_keeps_an_append_only_file_and_never_evicts():
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])


def test_exactly_one_beat():
    beats = [name for name in TIDE_SERVICES if SERVICES[name].get("command", [None])[0] == "beat"]
    assert beats == ["beat"]
    assert SERVICES["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_gpu_worker_is_under_a_profile_and_reserves_nvidia_devices():
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["command"][0] == "worker" and gpu["build"]["args"]["TORCH"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "profiles" not in SERVICES["worker"], "the CPU worker runs by default"


def test_depends_on_has_conditions_that_the_targets_can_meet():
    for name, service in SERVICES.items():
        for target, dependency in service.get("depends_on", {}).items():
            condition = dependency["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target}'s health, which has no check"
            else:
                assert condition == "service_completed_successfully" and SERVICES[target]["restart"] == "no"


def test_long_running_services_have_health_checks():
    for name in ("redis", "minio", "api", "flower"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD"


def test_named_volumes_are_declared():
    declared = set(COMPOSE["volumes"])
    used = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert used and used <= declared


def test_build_args_name_the_dockerfile_stages():
    dockerfile = (REPO / "infra/Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS base-(\w+)$", dockerfile, re.M))
    assert "FROM base-${TORCH}" in dockerfile
    assert {SERVICES[name]["build"]["args"]["TORCH"] for name in TIDE_SERVICES} == stages == {"cpu", "cuda"}


def test_dockerfile_copies_every_package_and_installs_from_the_lock():
    dockerfile = (REPO / "infra/Dockerfile").read_text()
    copied = {word for line in dockerfile.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]}
    folders = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    assert folders | {"pyproject.toml", "requirements.lock"} <= copied
    assert 'ENTRYPOINT ["tide"]' in dockerfile
    (locked_torch,) = re.findall(r"^torch==([\d.]+)", (REPO / "requirements.lock").read_text(), re.M)
    assert f"ARG TORCH_VERSION={locked_torch}" in dockerfile and "download.pytorch.org/whl/cpu" in dockerfile
    pip_lines = [shlex.split(line.replace("\\", "")) for line in dockerfile.splitlines() if "pip install" in line]
    assert any('torch==${TORCH_VERSION}' in words for words in pip_lines)
    assert any("-c" in words and "." in words and "-e" not in words for words in pip_lines)
