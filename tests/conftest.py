"""Helpers shared by the Python checks (tests/compose, tests/kubernetes, tests/e2e)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def app_variables():
    """Every environment variable src/config/mod.rs reads."""
    source = (ROOT / "src/config/mod.rs").read_text()
    names = set(re.findall(r'\(\s*"([A-Z][A-Z0-9_]+)"', source))
    assert {"DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL"} <= names, names
    return names


@pytest.fixture(scope="session")
def app_routes():
    """Every path the router serves."""
    source = (ROOT / "src/web/mod.rs").read_text()
    return set(re.findall(r'\.route\(\s*"([^"]+)"', source))
