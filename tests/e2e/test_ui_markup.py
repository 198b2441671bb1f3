"""Nothing from the source is markup in the Prefect UI (issue 20).

The report artifacts composed from hostile countries are published in a flow run on the session's
real server and opened in both of its UIs in headless Debian Chromium: the classic one (what
`/artifacts/...` serves) and the newer one under `/v2` (where the server sends a browser that
opens `/`). Each page fetches nothing from another host, holds no image, form field or link made
from a value, and shows the values as text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest

from local_api.faults import MARKUP_COUNTRY
from local_api.server import LocalApiServer
from tasks.common.reports import CHART_TOP_COUNTRIES, TOP_GMAIL_COUNTRIES
from tasks.reporting.artifacts import (
    USER_METRICS_REPORT,
    compose_reports,
    create_artifacts,
    ui_text,
)
from tasks.reporting.charts import top_countries_chart
from tests.e2e.conftest import AUTH, Service, trigger
from tests.e2e.test_ui import CHROMIUM_ARGS
from tests.tasks.reporting.test_artifacts import (
    HOSTILE_COUNTRIES,
    LITERAL_COUNTRIES,
    WORD_JOINER,
    make_reports,
    shown,
    tiny_png,
)

pytestmark = pytest.mark.e2e

# Every host name but the server's fails to resolve at once, so nothing leaves the machine; the
# page's requests are still seen (page.on("request") fires before the lookup).
OFFLINE_ARGS = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
# The newer UI asks Amplitude for its analytics configuration on every page, whatever the page
# shows and whatever the server's analytics setting (it then sends no event): Prefect's own
# request, the one host besides the server that a page may ask for.
UI_OWN_HOSTS = frozenset({"sr-client-cfg.amplitude.com"})
RUN_DATE = dt.date(2024, 5, 1)
COUNTRIES = (*HOSTILE_COUNTRIES, *LITERAL_COUNTRIES)
# Names from the vocabulary, which every view shows exactly as written.
NAMES = ("Bosnia & Herzegovina", "Côte d’Ivoire")
TOP = pd.DataFrame(
    {
        "rank": [1, 2, 3, 3, 3],
        "country": list(COUNTRIES),
        "gmail_users": [4321, 3210, 2109, 2109, 2109],
    }
)
# Where each page shows the artifact's data: the test fails, rather than passes, on a page that
# did not render it.
CONTENT = {
    ("classic", "markdown"): ".artifact-data-markdown",
    ("classic", "table"): ".artifact-data-table__cell",
    ("v2", "markdown"): '[data-testid="markdown-display"]',
    ("v2", "table"): '[data-testid="table-display"] table',
}
UI_PREFIX = {"classic": "", "v2": "/v2"}

# What the page holds: images from elsewhere, password fields and script links anywhere, and any
# element that loads, links or takes input inside the artifact's data.
PAGE_CHECK = """content => {
    const here = location.origin + '/';
    const inData = [...document.querySelectorAll(content)].flatMap(
        e => [...e.querySelectorAll('a, input, script, iframe, form, object, embed, img')]
    ).filter(e => !(e.tagName === 'IMG' && e.src.startsWith('data:image/png;base64,')));
    return {
        foreignImages: [...document.images].map(i => i.src)
            .filter(s => !s.startsWith('data:') && !s.startsWith(here)),
        passwordFields: document.querySelectorAll('input[type=password]').length,
        scriptLinks: document.querySelectorAll('a[href^="javascript:" i]').length,
        elementsInData: inData.map(e => e.outerHTML.slice(0, 200)),
        dataImages: [...document.querySelectorAll(content)].flatMap(
            e => [...e.querySelectorAll('img[src^="data:image/png;base64,"]')]
        ).length,
    };
}"""
# The artifact's data as the page shows it (word joiners, which only break autolinks, dropped).
SEEN = """content => [...document.querySelectorAll(content)].map(e => e.innerText).join('\\n')
    .replaceAll('\\u2060', '')"""
# Once the data shows every expected text and, decoded, as many embedded PNGs as expected: what
# the page holds at that moment (the newer UI may mount the markdown again afterwards).
SHOWN = f"""({{content, texts, images}}) => {{
    const roots = [...document.querySelectorAll(content)];
    const seen = ({SEEN})(content);
    const decoded = roots
        .flatMap(e => [...e.querySelectorAll('img[src^="data:image/png;base64,"]')])
        .filter(i => i.complete && i.naturalWidth > 0);
    if (!roots.length || !texts.every(t => seen.includes(t)) || decoded.length !== images) {{
        return false;
    }}
    return ({PAGE_CHECK})(content);
}}"""


@dataclass(frozen=True)
class Visit:
    """One artifact page as the browser saw it."""

    url: str
    requests: list[str]
    found: dict[str, Any]
    missing: list[str]  # what the page did not show in time
    seen: str  # the page's text, where it did not

    def assert_shown(self) -> None:
        """The page showed every expected text."""
        assert not self.missing, f"{self.url} did not show {self.missing}:\n{self.seen[:3000]}"


def _visit(browser: Any, url: str, content: str, texts: list[str], images: int = 0) -> Visit:
    """Open `url` signed in, wait until it shows `texts` in `content` and `images` embedded
    PNGs, and look at the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    try:
        # The server asks for its auth string; both UIs send what their login form stored.
        context.add_init_script(f"localStorage.setItem('prefect-password', btoa({AUTH!r}))")
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url)
        seen = ""
        try:
            # Sized for a busy 2-core machine: the UI loads its bundle, then the artifact.
            arg = {"content": content, "texts": texts, "images": images}
            found = page.wait_for_function(SHOWN, arg=arg, timeout=60_000).json_value()
            missing = []
        except PlaywrightTimeout:
            # Still look at the page: what it fetched says more than what it lacks.
            found = page.evaluate(PAGE_CHECK, content)
            seen = page.evaluate(SEEN, content) or page.evaluate("document.body.innerText")
            missing = [t for t in texts if t not in seen] or [f"{images} decoded PNG(s)"]
        return Visit(url, requests, found, missing, seen)
    finally:
        context.close()


def _assert_inert(visit: Visit, ui: str, server_url: str) -> None:
    """Nothing of the page came from, or leads to, anywhere but the server."""
    origin = server_url.removesuffix("/api")
    elsewhere = {
        urlsplit(url).hostname
        for url in visit.requests
        if not url.startswith((f"{origin}/", "data:", f"blob:{origin}/"))
    }
    allowed = UI_OWN_HOSTS if ui == "v2" else frozenset()
    assert elsewhere <= allowed, f"{visit.url} asked {sorted(map(str, elsewhere))}"
    assert not [url for url in visit.requests if "evil.example" in url]
    found = visit.found
    assert found["foreignImages"] == [] and found["elementsInData"] == [], (visit.url, found)
    assert found["passwordFields"] == 0 and found["scriptLinks"] == 0, (visit.url, found)


@pytest.fixture(scope="module")
def published(service: Service) -> dict[str, str]:
    """The reports composed from hostile countries, created by a flow run on the session's server
    (the composer and `create_artifacts` a run uses): artifact id by key."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.settings import temporary_settings

    reports = make_reports(top=TOP)

    @flow(name="hostile-report-artifacts")
    def publish() -> list[str]:
        images = {CHART_TOP_COUNTRIES: tiny_png(8, 8)}
        return create_artifacts(compose_reports(RUN_DATE, 1000, reports, images), [])

    with temporary_settings(service.settings()):
        state = publish(return_state=True)
        assert state.is_completed(), state
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
            )
    return {artifact.key: str(artifact.id) for artifact in artifacts if artifact.key}


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """Debian's Chromium under Playwright, with every host but 127.0.0.1 unresolvable."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=OFFLINE_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _expected(ui: str, kind: str) -> list[str]:
    """What the page must show: the values as written, and the Gmail users (so it is no blank)."""
    if ui == "v2" and kind == "table":
        # The newer UI shows a table cell as plain text: the published cell as it is, markup in
        # its inert spelling (a vocabulary name has nothing to escape: see NAMES below).
        texts = [ui_text(c).replace(WORD_JOINER, "") for c in COUNTRIES]
    else:
        texts = [shown(c) for c in COUNTRIES]
    counts = ["4321", "3210", "2109"] if kind == "table" else ["4,321", "3,210", "2,109"]
    return [*texts, *NAMES, *counts]


@pytest.mark.parametrize("ui", ["classic", "v2"])
@pytest.mark.parametrize("kind", ["table", "markdown"])
def test_hostile_countries_are_text_in_the_ui(
    service: Service, published: dict[str, str], browser: Any, ui: str, kind: str
) -> None:
    key = TOP_GMAIL_COUNTRIES.key if kind == "table" else USER_METRICS_REPORT
    origin = service.server_url.removesuffix("/api")
    url = f"{origin}{UI_PREFIX[ui]}/artifacts/artifact/{published[key]}"
    # The markdown report embeds one chart: data: images are what the UI may load.
    images = 1 if kind == "markdown" else 0
    visit = _visit(browser, url, CONTENT[ui, kind], _expected(ui, kind), images)
    _assert_inert(visit, ui, service.server_url)
    visit.assert_shown()  # with the chart decoded, where there is one
    assert visit.found["dataImages"] == images, visit.found


def test_chart_labels_from_the_data_show_as_written_in_plotly(browser: Any) -> None:
    # plotly.js from the plotly package, as kaleido renders the report's charts with it.
    import plotly

    script = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    figure = json.loads(top_countries_chart(TOP).to_json())
    context = browser.new_context()
    try:
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.set_content('<div id="chart" style="width:1400px;height:500px"></div>')
        page.add_script_tag(path=str(script))
        page.evaluate("f => Plotly.newPlot('chart', f.data, f.layout, {staticPlot: true})", figure)
        labels = page.eval_on_selector_all("#chart .xtick text", "ts => ts.map(t => t.textContent)")
        elements = page.eval_on_selector_all(
            "#chart a, #chart image, #chart img", "es => es.map(e => e.outerHTML.slice(0, 200))"
        )
    finally:
        context.close()
    assert sorted(" ".join(label.split()) for label in labels) == sorted(map(shown, COUNTRIES))
    assert elements == [] and requests == []


def test_a_markup_country_run_leaves_no_markup_in_the_ui(
    service: Service,
    start_api: Callable[..., LocalApiServer],
    browser: Any,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.settings import temporary_settings

    # The local API's markup-country drift: refused before anything is staged (issue 20, item 1);
    # what the run publishes is its failure report, whose page must be as inert as any.
    api = start_api(drift=("markup-in-country",))
    failed = trigger(service, f'api_url="{api.base_url}"', "records=100")
    assert failed.returncode != 0, failed.output
    with temporary_settings(service.settings()), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [failed.flow_run_id]})
        )
    failure = next(a for a in artifacts if a.key == "run-failure")
    assert "VocabularyError" in str(failure.data)
    assert not any(part in str(a.data) for a in artifacts for part in ("evil.example", "<img"))
    assert MARKUP_COUNTRY not in str([a.data for a in artifacts])
    origin = service.server_url.removesuffix("/api")
    for ui in ("classic", "v2"):
        url = f"{origin}{UI_PREFIX[ui]}/artifacts/artifact/{failure.id}"
        visit = _visit(browser, url, CONTENT[ui, "markdown"], ["Run failed", "VocabularyError"])
        _assert_inert(visit, ui, service.server_url)
        visit.assert_shown()
