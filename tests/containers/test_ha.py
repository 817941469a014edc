"""The Patroni topology in containers: `docker compose -f docker-compose.ha.yml up`.

Three etcd members and three PostgreSQL nodes under Patroni, from one image built here from
debian:bookworm-slim (docker/patroni/), with web and nginx as in docker-compose.yml. The
project is `rwsplit-ci-ha` on port 18091, beside the plain topology's, and is taken down with
its volumes however the run ends. The native HA stack (tests/ha/) measures crash, switchover
and partition under load; here the container topology shows it boots, elects, and follows a
primary killed as a machine would die.
"""

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RWSPLIT_COMPOSE_FILE": "docker-compose.ha.yml",
       "RWSPLIT_COMPOSE_PROJECT": "rwsplit-ci-ha", "RWSPLIT_COMPOSE_PORT": "18091"}
COMPOSE = [str(ROOT / "tests/containers/compose")]
URL = "http://127.0.0.1:18091"


def compose(*args, timeout=300):
    result = subprocess.run(COMPOSE + list(args), cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env=ENV)
    assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def get(path, timeout=40):
    try:
        with urllib.request.urlopen(URL + path, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def readiness():
    status, body = get("/readyz", timeout=5)
    return json.loads(body) if status in (200, 503) and body else {}


def wait_for(what, check, limit_s):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {limit_s}s")


@pytest.fixture(scope="module", autouse=True)
def ha_stack():
    subprocess.run(COMPOSE + ["prepare"], cwd=ROOT, check=True, timeout=900, env=ENV)
    compose("down", "-v", "--remove-orphans", "--timeout", "5")
    started = time.monotonic()
    try:
        compose("up", "-d", "--build", "--scale", "web=2", timeout=900)
        wait_for("a primary and two streaming replicas, seen by the web tier",
                 lambda: (r := readiness()).get("ready")
                 and len([n for n in r.get("replicas", []) if n["usable"]]) == 2, 240)
        print(f"\n[containers-ha] up in {time.monotonic() - started:.0f}s")
        yield
    finally:
        compose("down", "-v", "--remove-orphans", "--timeout", "5")


def test_the_page_names_the_primary_patroni_elected():
    status, page = get("/")
    assert status == 200
    primary = readiness()["primary_node"]
    assert primary in {"node1", "node2", "node3"}
    assert f'id="primary-node">{primary}<' in page


def test_a_killed_primary_container_is_replaced_and_writes_follow_without_failing():
    old = readiness()["primary_node"]
    cid = compose("ps", "-q", old).strip()
    subprocess.run(["docker", "kill", cid], check=True, capture_output=True, timeout=60)
    killed = time.monotonic()
    statuses = []
    # Sequential requests: each waits out the failover rather than fail.
    while time.monotonic() - killed < 45:
        status, _ = get("/")
        statuses.append(status)
        new = readiness().get("primary_node")
        if status == 200 and new not in (None, old):
            break
    took = time.monotonic() - killed
    print(f"\n[containers-ha] {old} killed: {len(statuses)} requests {statuses}, "
          f"a new primary answered writes after {took:.1f}s")
    assert statuses and statuses[-1] == 200 and all(s == 200 for s in statuses), statuses
    assert took < 30, took
    # The old node, started again, rejoins: the web tier sees it as a usable replica.
    subprocess.run(["docker", "start", cid], check=True, capture_output=True, timeout=60)
    wait_for(f"{old} back as a replica",
             lambda: any(n["name"] == old and n["role"] == "replica" and n["usable"]
                         for n in readiness().get("replicas", [])), 120)

