"""deploy/kubernetes/ without a cluster: every manifest validates, and the wiring is right."""

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy/kubernetes").glob("*.yaml"))
DOCS = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def kind(name):
    found = [d for d in DOCS if d["kind"] == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def strict(schema):
    """Kubernetes prunes unknown fields instead of failing; reject them, so a typo shows."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def cluster_validator():
    crd = yaml.safe_load((ROOT / "tests/schemas/cnpg-clusters-crd.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("path", [p for p in MANIFESTS if "postgresql.cnpg.io" not in p.read_text()],
                         ids=lambda p: p.name)
def test_core_kinds_validate(path):
    result = subprocess.run(["kubernetes-validate", "--strict", "--quiet", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cluster_validates_against_the_operators_schema():
    validator = cluster_validator()
    cluster = kind("Cluster")
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(cluster)]
    assert not errors, errors
    # The check can fail: a misspelt field or a wrong type is caught.
    broken = copy.deepcopy(cluster)
    broken["spec"]["instance"] = 3
    broken["spec"]["storage"]["size"] = 5
    assert len(list(validator.iter_errors(broken))) == 2


def test_one_primary_two_replicas_and_the_app_uses_the_operators_services():
    cluster = kind("Cluster")
    assert cluster["spec"]["instances"] == 3
    name = cluster["metadata"]["name"]
    env = {e["name"]: e for e in kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert f"@{name}-rw:" in env["DATABASE_URL"]["value"]
    assert f"@{name}-ro:" in env["DATABASE_REPLICA_URLS"]["value"]
    for secret_var in ["DB_USER", "DB_PASSWORD"]:
        assert env[secret_var]["valueFrom"]["secretKeyRef"]["name"] == f"{name}-app"


def test_every_variable_the_app_reads_is_set(app_variables):
    container = kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    missing = app_variables - {e["name"] for e in container["env"]}
    assert not missing, sorted(missing)


def test_probes_point_at_real_routes(app_routes):
    container = kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= app_routes
    port_names = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in port_names


def test_the_web_tier_is_scaled_bounded_and_protected():
    deployment = kind("Deployment")
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert kind("PodDisruptionBudget")["spec"]["minAvailable"] == 2
    hpa = kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    redis = kind("StatefulSet")
    assert redis["spec"]["replicas"] == 1


def test_the_ingress_retries_like_the_compose_nginx():
    annotations = kind("Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] == "error http_502"
    assert kind("Ingress")["spec"]["ingressClassName"] == "nginx"
