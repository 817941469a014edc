"""Headless Chromium against the test stack: what a person sees on / and /test.

Chromium's own --dump-dom reads the page after it loaded (stylesheet and CSP applied), and
--screenshot keeps a picture of each page in target/e2e/ as an artifact of the run.
"""

import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
URL = os.environ.get("RWSPLIT_TEST_URL", "")
ARTIFACTS = ROOT / "target/e2e"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    assert URL.startswith("http://127.0.0.1:"), "RWSPLIT_TEST_URL: run through scripts/test"
    assert Path(CHROMIUM).exists(), "chromium is not installed (scripts/test installs it)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1280,1800", "--hide-scrollbars",
        ]

        def run(*args):
            result = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)
            assert result.returncode == 0, result.stderr[-2000:]
            return result.stdout

        yield run


def text_of(dom, element_id):
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no #{element_id} on the page"
    return match.group(1).strip()


def test_the_request_log_page(browser):
    for _ in range(25):  # at least 25 rows to show
        urllib.request.urlopen(URL + "/", timeout=10).read()
    dom = browser("--dump-dom", URL + "/")
    assert re.fullmatch(r"web\d+", text_of(dom, "instance"))
    assert re.fullmatch(r"primary|replica\d+", text_of(dom, "read-node"))
    assert text_of(dom, "freshness") in {"seen", "not seen yet"}
    tbody = dom[dom.index('<table id="log">'):]
    tbody = tbody[tbody.index("<tbody>"):tbody.index("</tbody>")]
    assert tbody.count("<tr") == 25
    shot = ARTIFACTS / "index.png"
    browser(f"--screenshot={shot}", URL + "/")
    assert shot.stat().st_size > 10_000


def test_the_staleness_page(browser):
    dom = browser("--dump-dom", URL + "/test?mode=all&n=20")
    summary = dom[dom.index('<table id="summary">'):]
    summary = summary[:summary.index("</table>")]
    for mode in ["eventual", "sticky", "causal"]:
        assert f'data-mode="{mode}"' in summary
    # One bar per probe; marks under the axis for the reader's time travel come on top.
    assert '<svg class="chart"' in dom
    assert dom.count("<rect ") - dom.count('<rect class="travel"') == 60
    assert "pg_stat_replication" in dom
    shot = ARTIFACTS / "test.png"
    browser(f"--screenshot={shot}", URL + "/test?mode=all&n=40")
    assert shot.stat().st_size > 10_000
