"""The report artifact in the Prefect UI, in headless Debian Chromium: charts load, answers show."""

from __future__ import annotations

import html
import re

import pytest

from flows.processes import PROJECT_DIR
from tests.e2e.conftest import AUTH, Run, Service

pytestmark = pytest.mark.e2e

SCREENSHOT = PROJECT_DIR / "screenshots" / "user-metrics-report.png"
# The browser the pipeline finds (Debian's chromium), never a downloaded one; root needs
# --no-sandbox.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _answers(markdown: str) -> list[str]:
    """The sentence under each `## ` heading, as the UI renders it (backslash escapes, then
    entities, undone: the reverse of `ui_text`)."""
    lines = markdown.splitlines()
    answers = [lines[i + 2] for i, line in enumerate(lines) if line.startswith("## ")]
    return [html.unescape(re.sub(r"\\(.)", r"\1", a)) for a in answers]


def test_report_artifact_page_shows_charts_and_answers(
    service: Service, daily_run: Run, chromium: str
):
    from playwright.sync_api import sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter
    from prefect.settings import temporary_settings

    assert daily_run.returncode == 0, daily_run.output
    with (
        temporary_settings(service.settings()),
        get_client(sync_client=True) as client,
    ):
        # Other runs of the session publish reports too: this run's.
        [report] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["user-metrics-report"])),
            flow_run_filter=FlowRunFilter(id={"any_": [daily_run.flow_run_id]}),
        )
    answers = _answers(str(report.data))
    assert len(answers) == 3, answers
    images = str(report.data).count("](data:image/png;base64,")
    assert images >= 2

    url = f"{service.server_url.removesuffix('/api')}/artifacts/artifact/{report.id}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 2000})
            # The server asks for its auth string; the UI sends what its login form stored.
            context.add_init_script(f"localStorage.setItem('prefect-password', btoa({AUTH!r}))")
            page = context.new_page()
            page.goto(url)
            for answer in answers:
                page.get_by_text(answer, exact=True).wait_for(state="visible", timeout=60_000)
            # Every embedded chart decoded: complete with a real width, none broken.
            page.wait_for_function(
                """n => {
                    const imgs = [...document.querySelectorAll('img[src^="data:image/png"]')];
                    return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0);
                }""",
                arg=images,
                timeout=60_000,
            )
            widths = page.eval_on_selector_all(
                'img[src^="data:image/png"]', "imgs => imgs.map(i => i.naturalWidth)"
            )
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert len(widths) == images and min(widths) > 0
    assert SCREENSHOT.stat().st_size > 0
