"""Static checks of the container set-up (tests/containers/ runs it for real).

The compose file validates against the Compose Specification's schema, its topology is what
docs/deployment.md promises, every Dockerfile passes hadolint and starts from debian:bookworm-slim,
and nginx accepts the config rendered from the one template both topologies use.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
HA_SERVICES = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())["services"]
DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "docker").glob("*/Dockerfile")),
               ROOT / "tests/containers/prebuilt/Dockerfile"]


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.ha.yml"])
def test_compose_file_matches_the_compose_specification(file):
    schema = ROOT / "tests/schemas/compose-spec.json"
    subprocess.run(
        ["check-jsonschema", "--schemafile", str(schema), str(ROOT / file)],
        check=True,
    )


def test_web_scales():
    web = SERVICES["web"]
    assert "container_name" not in web
    assert "ports" not in web
    assert web["build"] == "."


def dockerfile_of(service):
    build = SERVICES[service]["build"]
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build["context"] / build.get("dockerfile", "Dockerfile")


def test_every_image_is_built_here_from_debian_bookworm_slim():
    """No registry image but the one base: debian:bookworm-slim (and Rust's, to build web)."""
    for name, service in SERVICES.items():
        # An `image:` beside `build:` only names what is built here.
        assert "build" in service, f"{name} is not built from this repository"
        dockerfile = dockerfile_of(name).read_text()
        stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", dockerfile, re.M)
        names = {alias for _, alias in stages if alias}
        for image, _ in stages:
            assert image in names or image in {"debian:bookworm-slim", "rust:1.95-slim-bookworm"}, (name, image)


def test_database_nodes_share_one_image_and_the_native_stacks_scripts():
    assert {dockerfile_of(n) for n in ["primary", "replica1", "replica2"]} == {ROOT / "docker/postgres/Dockerfile"}
    # One named image, so Compose stores it once rather than once per node.
    images = {SERVICES[n].get("image") for n in ["primary", "replica1", "replica2"]}
    assert len(images) == 1 and None not in images, images
    roles = {n: SERVICES[n]["environment"]["PG_ROLE"] for n in ["primary", "replica1", "replica2"]}
    assert roles == {"primary": "primary", "replica1": "replica", "replica2": "replica"}
    dockerfile = (ROOT / "docker/postgres/Dockerfile").read_text()
    assert "postgresql-15" in dockerfile
    assert "COPY scripts/primary-init scripts/replica-setup docker/postgres/entrypoint" in dockerfile
    entrypoint = (ROOT / "docker/postgres/entrypoint").read_text()
    assert "primary-init" in entrypoint and "replica-setup" in entrypoint
    stack = (ROOT / "scripts/stack").read_text()
    assert "scripts/replica-setup" in stack and "scripts/primary-init" in stack


def web_variables(services):
    """The web service's environment: its own, and docker/web.env's, which both files share."""
    web = services["web"]
    assert web["env_file"] == "docker/web.env"
    shared = (ROOT / web["env_file"]).read_text().splitlines()
    return set(web["environment"]) | {line.split("=", 1)[0] for line in shared if "=" in line and not line.startswith("#")}


def test_every_variable_the_app_reads_is_set_for_web(app_variables):
    missing = app_variables - web_variables(SERVICES)
    assert not missing, f"web does not set {sorted(missing)}"


def test_the_ha_topology_runs_etcd_and_patroni_from_one_image_and_gives_web_every_node():
    etcd = [f"etcd{n}" for n in (1, 2, 3)]
    nodes = [f"node{n}" for n in (1, 2, 3)]
    images = {HA_SERVICES[s]["image"] for s in etcd + nodes}
    assert len(images) == 1, images
    assert {HA_SERVICES[s]["build"]["dockerfile"] for s in etcd + nodes} == {"docker/patroni/Dockerfile"}
    dockerfile = (ROOT / "docker/patroni/Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm-slim$", dockerfile, re.M)
    assert all(p in dockerfile for p in ["postgresql-15", "patroni", "etcd-server"])
    # The nodes' Patroni settings come from the script the native HA stack uses.
    assert "patroni-config" in (ROOT / "docker/patroni/entrypoint").read_text()
    assert "scripts/patroni-config" in (ROOT / "scripts/stack-ha").read_text()
    urls = HA_SERVICES["web"]["environment"]["DATABASE_NODE_URLS"].split(",")
    assert [u.split("@")[1].split(":")[0] for u in urls] == nodes
    assert {n: HA_SERVICES["web"]["depends_on"][n]["condition"] for n in nodes} == dict.fromkeys(nodes, "service_healthy")
    assert HA_SERVICES["web"]["env_file"] == SERVICES["web"]["env_file"]
    assert "ports" not in HA_SERVICES["web"] and HA_SERVICES["nginx"]["ports"] == SERVICES["nginx"]["ports"]


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


def test_apply_delay_and_second_replica_are_switches():
    assert "REPLICA_APPLY_DELAY_MS" in SERVICES["replica1"]["environment"]["APPLY_DELAY_MS"]
    assert "recovery_min_apply_delay=${APPLY_DELAY_MS" in (ROOT / "docker/postgres/entrypoint").read_text()
    assert SERVICES["replica2"]["profiles"] == ["replica2"]


def test_nginx_uses_the_shared_template_and_passes_headers():
    assert dockerfile_of("nginx") == ROOT / "docker/nginx/Dockerfile"
    dockerfile = dockerfile_of("nginx").read_text()
    assert "COPY nginx/default.conf.template /etc/nginx/templates/default.conf.template" in dockerfile
    assert SERVICES["nginx"]["environment"]["UPSTREAM_HOST"] == "web"
    assert "envsubst '${UPSTREAM_SERVERS} ${NGINX_PORT}'" in (ROOT / "docker/nginx/entrypoint").read_text()
    template = (ROOT / "nginx/default.conf.template").read_text()
    for needle in ["X-Forwarded-For $proxy_add_x_forwarded_for", 'X-Request-Id "$msec-$request_id"',
                   "proxy_next_upstream error timeout http_502", "${UPSTREAM_SERVERS}"]:
        assert needle in template, needle


def test_nginx_is_published_on_this_machine_only():
    assert SERVICES["nginx"]["ports"] == ["127.0.0.1:${RWSPLIT_PORT:-8080}:8080"]


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_retried_request_carries_the_same_idempotency_key(tmp_path):
    """The template's nginx in front of two upstreams: the first to get the request closes
    the connection unanswered, so nginx retries on the other. GET / is exactly-once only if
    both tries carry the same X-Request-Id (time first, so nginx must not evaluate it again)."""
    keys, lock = [], threading.Lock()
    listeners = []
    for _ in range(2):
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        listeners.append(listener)

    def upstream(listener):
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            key = re.search(rb"(?im)^x-request-id: *(\S+)", request)
            with lock:
                keys.append(key.group(1).decode() if key else None)
                first = len(keys) == 1
            if not first:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threads = [threading.Thread(target=upstream, args=(l,), daemon=True) for l in listeners]
    for t in threads:
        t.start()
    port = free_port()
    servers = "".join(f"server 127.0.0.1:{l.getsockname()[1]};\n" for l in listeners)
    site = (ROOT / "nginx/default.conf.template").read_text()
    site = site.replace("${UPSTREAM_SERVERS}", servers).replace("${NGINX_PORT}", f"127.0.0.1:{port}")
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in
                    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path}/site.conf; }}\n")
    nginx = [nginx_binary(), "-q", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)]
    subprocess.run(nginx, check=True, timeout=10)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        for t in threads:
            t.join(timeout=10)
    finally:
        subprocess.run(nginx + ["-s", "stop"], timeout=10)
        for listener in listeners:
            listener.close()
    assert len(keys) == 2, keys
    assert keys[0] == keys[1], keys
    assert re.fullmatch(r"\d{10}\.\d{3}-[0-9a-f]{32}", keys[0]), keys


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(["hadolint", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_web_dockerfile_runs_non_root_caches_dependencies_and_can_take_a_prebuilt_binary():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", dockerfile, re.M)
    # The runtime first, so `--target runtime` builds it without the Rust image; the last
    # stage is that runtime with the binary built in the Rust stage.
    assert stages == [("debian:bookworm-slim", "runtime"), ("rust:1.95-slim-bookworm", "build"), ("runtime", "")]
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    # The manifests are copied and built before the sources.
    assert dockerfile.index("COPY Cargo.toml Cargo.lock") < dockerfile.index("COPY src src")
    for part in ["templates", "migrations", "static"]:
        assert f"COPY {part} {part}" in dockerfile
    prebuilt = (ROOT / "tests/containers/prebuilt/Dockerfile").read_text()
    assert "FROM ${RUNTIME_IMAGE}" in prebuilt and "--target runtime" in (ROOT / "tests/containers/compose").read_text()
