"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright) against a real `tide stack up`:
the page loads behind the key, a job submitted through the API appears on it and reaches 100% without a reload, and
a screenshot is kept as a test artifact (build/test-artifacts/dashboard.png, or under $TIDE_TEST_ARTIFACTS). The stack
logs JSON (TIDE_LOG_FORMAT=json): the worker's lines about the job name its id and shard."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers.paths import REPO
from tests.helpers.stack import running_stack

KEY, SERVED = "tide-dev-key", "tiny-llama"
CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser")) if path), None)
ARTIFACTS = Path(os.environ.get("TIDE_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the README's test command installs "
                                 "Debian's `chromium` package")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TIDE_"))}
    env.update(TIDE_API_KEYS=KEY, TIDE_SHARD_ROWS="6", TIDE_LOG_FORMAT="json")
    with running_stack(tmp_path_factory.mktemp("dash-stack"), env, tiny_model_dir("llama"), SERVED,
                       worker_args="--dtype float32 --max-num-seqs 16") as running:
        yield running.api_url, running.state


def test_a_submitted_job_appears_on_the_dashboard_and_reaches_100_percent(stack):
    from playwright.sync_api import expect, sync_playwright

    api_url, state = stack
    auth = {"Authorization": f"Bearer {KEY}"}
    lines = "".join(f'{{"id": "q{i}", "prompt": "Question {i}: say hi", "max_tokens": 24}}\n' for i in range(30))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{api_url}/#key={KEY}")
            expect(page.locator("#main")).to_be_visible(timeout=15_000)
            expect(page.locator("#updated")).to_contain_text("updated")
            assert page.url == f"{api_url}/"  # the key left the address bar
            expect(page.locator("#workers tbody tr[data-worker]")).to_have_count(1, timeout=30_000)

            upload = httpx.post(f"{api_url}/v1/files", headers=auth, data={"purpose": "batch"},
                                files={"file": ("dash.jsonl", lines.encode())}, timeout=30).json()
            job = httpx.post(f"{api_url}/v1/jobs", headers=auth, timeout=30,
                             json={"input": upload["id"], "model": SERVED}).json()
            row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
            expect(row).to_be_visible(timeout=15_000)  # appears without a reload
            expect(row.locator(".pct")).to_contain_text("100%", timeout=240_000)
            expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
            expect(row.locator(".pct")).to_contain_text("30/30")
            with page.expect_popup() as opened:  # the finished job's report.html, fetched with the key
                row.locator("a.report").click()
            report_page = opened.value
            expect(report_page.locator("h1")).to_contain_text(job["id"], timeout=15_000)
            expect(report_page.locator("svg").first).to_be_visible()
            report_page.close()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000 and not errors, errors

            page.goto(f"{api_url}/")  # a fresh tab without the key in its storage would ask; this one still has it
            page.evaluate("sessionStorage.clear()")
            page.reload()
            expect(page.locator("#login")).to_be_visible()
        finally:
            browser.close()
    summary = httpx.get(f"{api_url}/v1/jobs/{job['id']}", headers=auth, timeout=30).json()
    assert summary["status"] == "completed" and summary["summary_uri"].endswith("summary.json")
    report = Path(summary["summary_uri"]).with_name("report.html")
    assert report.exists() and "Throughput" in report.read_text()

    records = [json.loads(line) for name in ("worker-0", "api", "beat") for line in
               (state / "logs" / f"{name}.log").read_text().splitlines() if line.startswith("{")]
    about_job = [r for r in records if r["job_id"] == job["id"]]
    assert {r["process"] for r in records} >= {"worker", "api", "beat"}
    assert {r["shard_id"] for r in about_job if r["logger"] == "tide.worker"} == set(range(5))  # 30 rows / 6
