"""infra/k8s checked without a cluster: built-in kinds against Kubernetes' JSON schemas, KEDA objects by structure,
and every name, setting, secret and queue against the code and the other manifests."""
from __future__ import annotations

from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kombu.transport.redis import Channel

from tests.helpers.paths import REPO
from tests.infra.known import parse_tide_args, unknown_variables
from tide.jobs.specs import queue_for
from tide.workers.celery_app import make_app

K8S = REPO / "infra/k8s"
KUBERNETES_VERSION = "1.35.0"  # schemas bundled with kubernetes-validate; validated offline
KEDA = "keda.sh/v1alpha1"

FILES = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
DOCS = [doc for name in FILES for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _of(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


DEPLOYMENTS, SECRETS, CONFIGMAPS = _of("Deployment"), _of("Secret"), _of("ConfigMap")
CONTAINERS = [(name, c) for name, d in DEPLOYMENTS.items() for c in d["spec"]["template"]["spec"]["containers"]]


def _secret_keys(name: str) -> set[str]:
    secret = SECRETS[name]
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def _one_container(deployment: str) -> dict:
    (container,) = DEPLOYMENTS[deployment]["spec"]["template"]["spec"]["containers"]
    return container


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == FILES


@pytest.mark.parametrize("doc", [d for d in DOCS if not d["apiVersion"].startswith("keda.sh/")],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_builtin_kinds_match_the_kubernetes_schema(doc):
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("deployment,container", CONTAINERS, ids=[f"{d}/{c['name']}" for d, c in CONTAINERS])
def test_container_args_are_real_tide_commands(deployment, container):
    assert container["image"].startswith("tide:")
    assert parse_tide_args(container["args"]).command == container["args"][0]


@pytest.mark.parametrize("deployment,container", CONTAINERS, ids=[f"{d}/{c['name']}" for d, c in CONTAINERS])
def test_environment_is_known_settings_from_objects_that_exist(deployment, container):
    names = [e["name"] for e in container.get("env", [])]
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names += CONFIGMAPS[source["configMapRef"]["name"]]["data"]
        else:
            names += _secret_keys(source["secretRef"]["name"])
    assert unknown_variables(names) == []
    for entry in container.get("env", []):
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["key"] in _secret_keys(ref["name"])
    assert "TIDE_REDIS_URL" in names


def test_services_select_deployment_pods_and_their_ports():
    services = _of("Service")
    assert services
    for name, service in services.items():
        selector = service["spec"]["selector"]
        targets = [d for d in DEPLOYMENTS.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        ports = {p.get("name") for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_deployment_selectors_match_their_pod_labels():
    for deployment in DEPLOYMENTS.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_api_is_scraped_and_probed_on_the_port_it_listens_on():
    deployment = DEPLOYMENTS["tide-api"]
    container = _one_container("tide-api")
    port = parse_tide_args(container["args"]).port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(port), "/metrics")
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"]["path"] == path and named[container[probe]["httpGet"]["port"]] == port
    storage = CONFIGMAPS["tide-config"]["data"]["TIDE_STORAGE"]
    assert deployment["spec"]["replicas"] == 1 or storage.startswith("s3://"), "API replicas must share storage"


def test_the_scheduler_is_one_replica_recreated():
    beats = [name for name, c in CONTAINERS if c["args"][0] == "beat"]
    assert len(beats) == 1
    spec = DEPLOYMENTS[beats[0]]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"


def test_secret_values_are_marked_placeholders():
    not_credentials = {"address"}  # a host:port, which the placeholder URL next to it names too
    for name, secret in SECRETS.items():
        assert "data" not in secret, f"{name}: write placeholders as stringData, readable and marked"
        marked = {key: "CHANGE_ME" in value for key, value in secret["stringData"].items()}
        assert all(ok for key, ok in marked.items() if key not in not_credentials), name


def _queue_lists(queue: str) -> set[str]:
    """The Redis lists Celery's transport keeps for one queue: one per priority step (step 0 is the bare name)."""
    steps = make_app("redis://unused:6379/0").conf.broker_transport_options["priority_steps"]
    return {f"{queue}{Channel.sep}{step}" if step else queue for step in steps}


@pytest.mark.parametrize("scaled", list(_of("ScaledObject").values()), ids=lambda d: d["metadata"]["name"])
def test_keda_scales_a_gpu_worker_on_its_model_queue_down_to_zero(scaled):
    assert scaled["apiVersion"] == KEDA
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    target = spec["scaleTargetRef"]["name"]
    container = _one_container(target)
    args = parse_tide_args(container["args"])
    assert args.command == "worker"
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "replicas" not in DEPLOYMENTS[target]["spec"], "KEDA owns the worker's replica count"
    triggers = spec["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert {t["metadata"]["listName"] for t in triggers} == _queue_lists(queue_for(args.served_name or args.model))
    assert queue_for(args.served_name or args.model) in {t["metadata"]["listName"] for t in triggers}
    redis_url = urlsplit(SECRETS["tide-redis"]["stringData"]["url"])
    for trigger in triggers:
        assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")
        assert trigger["authenticationRef"]["name"] in _of("TriggerAuthentication")


def test_keda_reads_the_same_redis_as_the_workers():
    (auth,) = _of("TriggerAuthentication").values()
    assert auth["apiVersion"] == KEDA
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"address", "password"}
    for ref in refs.values():
        assert ref["key"] in _secret_keys(ref["name"])
    secret = SECRETS[refs["address"]["name"]]["stringData"]
    url = urlsplit(secret["url"])
    assert secret[refs["address"]["key"]] == f"{url.hostname}:{url.port}"
    assert secret[refs["password"]["key"]] == url.password
