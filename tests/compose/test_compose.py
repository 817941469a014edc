"""Checks of the container set-up that run without a Docker engine.

The compose file validates against the Compose Specification's schema, its topology is what
the README promises, the Dockerfile passes hadolint, and nginx accepts the config rendered
from the one template both topologies use.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OFFICIAL = {"postgres", "redis", "nginx"}


def test_compose_file_matches_the_compose_specification():
    schema = ROOT / "tests/schemas/compose-spec.json"
    subprocess.run(
        ["check-jsonschema", "--schemafile", str(schema), str(ROOT / "docker-compose.yml")],
        check=True,
    )


def test_web_scales():
    web = SERVICES["web"]
    assert "container_name" not in web
    assert "ports" not in web
    assert web["build"] == "."


def test_every_image_is_official_and_pinned_to_a_minor_version():
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image, _, tag = service["image"].partition(":")
        assert image in OFFICIAL, f"{name}: {image} is not an official image"
        assert re.match(r"^\d+\.\d+(\.\d+)?(-[a-z0-9]+)?$", tag), f"{name}: tag {tag!r} is not pinned"


def test_every_variable_the_app_reads_is_set_for_web(app_variables):
    missing = app_variables - set(SERVICES["web"]["environment"])
    assert not missing, f"web does not set {sorted(missing)}"


def test_every_variable_is_documented(app_variables):
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in app_variables:
        assert f"{name}=" in example, f"{name} missing from .env.example"
        assert f"`{name}`" in readme, f"{name} missing from the README's table"


def condition(service, dependency):
    return SERVICES[service]["depends_on"][dependency]["condition"]


def test_services_start_in_order():
    assert condition("replica1", "primary") == "service_healthy"
    assert condition("replica2", "primary") == "service_healthy"
    assert condition("web", "primary") == "service_healthy"
    assert condition("web", "redis") == "service_healthy"
    assert condition("nginx", "web") == "service_healthy"


def test_every_long_running_service_has_a_health_check():
    for name, service in SERVICES.items():
        assert "healthcheck" in service, f"{name} has no health check"


def test_only_nginx_is_published():
    published = {name for name, s in SERVICES.items() if s.get("ports")}
    assert published == {"nginx"}, published


def test_databases_keep_their_data_in_named_volumes():
    for name in ["primary", "replica1", "replica2"]:
        mounts = [v.split(":")[0] for v in SERVICES[name]["volumes"]]
        assert f"{name}-data" in mounts and f"{name}-data" in COMPOSE["volumes"], name


def test_replicas_use_the_native_stacks_set_up_script():
    for name in ["replica1", "replica2"]:
        assert "./scripts/replica-setup:/usr/local/bin/replica-setup:ro" in SERVICES[name]["volumes"]
        assert "replica-setup" in " ".join(SERVICES[name]["entrypoint"])
    assert "scripts/replica-setup" in (ROOT / "scripts/stack").read_text()
    assert "./scripts/primary-init:/docker-entrypoint-initdb.d/10-rwsplit.sh:ro" in SERVICES["primary"]["volumes"]
    assert "scripts/primary-init" in (ROOT / "scripts/stack").read_text()


def test_apply_delay_and_second_replica_are_switches():
    assert "REPLICA_APPLY_DELAY_MS" in SERVICES["replica1"]["environment"]["APPLY_DELAY_MS"]
    assert "recovery_min_apply_delay" in " ".join(SERVICES["replica1"]["entrypoint"])
    assert SERVICES["replica2"]["profiles"] == ["replica2"]


def test_nginx_uses_the_shared_template_and_passes_headers():
    nginx = SERVICES["nginx"]
    assert "./nginx/default.conf.template:/etc/nginx/templates/default.conf.template:ro" in nginx["volumes"]
    assert "resolve" in nginx["environment"]["UPSTREAM_SERVERS"]
    template = (ROOT / "nginx/default.conf.template").read_text()
    for needle in ["X-Forwarded-For $proxy_add_x_forwarded_for", "X-Request-Id $request_id",
                   "proxy_next_upstream", "${UPSTREAM_SERVERS}"]:
        assert needle in template, needle


def nginx_binary():
    return shutil.which("nginx") or "/usr/sbin/nginx"


def test_the_native_nginx_config_passes_nginx_t():
    """The running test stack's config, rendered by scripts/stack from the same template."""
    stack_dir = Path(os.environ.get("STACK_DIR", ROOT / ".stack-test")).resolve()
    conf = stack_dir / "nginx/nginx.conf"
    assert conf.exists(), f"{conf} missing: run through scripts/test"
    rendered = (stack_dir / "nginx/default.conf").read_text()
    assert "upstream rwsplit_web" in rendered and "${" not in rendered
    result = subprocess.run([nginx_binary(), "-t", "-q", "-c", str(conf), "-p", str(stack_dir / "nginx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_and_caches_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(stages) == 2 and stages[1].startswith("debian:") and "slim" in stages[1]
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    # The manifests are copied and built before the sources.
    assert dockerfile.index("COPY Cargo.toml Cargo.lock") < dockerfile.index("COPY src src")
    for part in ["templates", "migrations", "static"]:
        assert f"COPY {part} {part}" in dockerfile
