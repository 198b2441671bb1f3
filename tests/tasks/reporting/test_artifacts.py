"""The markdown report and its publication as Prefect artifacts."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import html
import json
import re
import struct
import zlib
from collections.abc import Iterator
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from tasks.common.reports import (
    CHART_AGE_GROUPS,
    CHART_HISTORY,
    CHART_TOP_COUNTRIES,
    published_reports,
)
from tasks.common.vocabulary import country_pairs
from tasks.quality.drift import SchemaChange, drift_markdown
from tasks.reporting import artifacts as publish
from tasks.reporting.charts import age_group_chart, top_countries_chart
from tasks.reporting.failure_report import failure_markdown
from tasks.reporting.privacy_report import privacy_artifact

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_IMAGE = re.compile(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand, so these tests need no browser."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_MAGIC
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_reports(
    *,
    german_users: int = 200,
    german_gmail_users: int = 35,
    share: float | None = 17.5,
    top: pd.DataFrame | None = None,
    over_60: int = 1234,
) -> dict[str, pd.DataFrame]:
    if top is None:
        top = pd.DataFrame(
            {"rank": [1, 2, 3], "country": ["Germany", "France", "Spain"], "gmail_users": [9, 8, 7]}
        )
    return {
        "germany-gmail-share": pd.DataFrame(
            {
                "german_users": [german_users],
                "german_gmail_users": [german_gmail_users],
                "gmail_share_pct": [share],
            }
        ),
        "top-gmail-countries": top,
        "gmail-users-over-60": pd.DataFrame({"gmail_users_over_60": [over_60]}),
    }


TIED_TOP = pd.DataFrame(
    {
        "rank": [1, 2, 2, 3, 3],
        "country": ["Germany", "France", "Spain", "Italy", "Bosnia & Herzegovina"],
        "gmail_users": np.array([12, 10, 10, 9, 9], dtype=np.int64),
    }
)


@pytest.fixture
def images() -> dict[str, bytes | None]:
    return {CHART_TOP_COUNTRIES: tiny_png(), CHART_AGE_GROUPS: tiny_png(3, 3)}


# --- plain functions ------------------------------------------------------------------------------


def test_artifact_keys_follow_prefects_rule() -> None:
    # Distinct, or one report's latest version would replace another's.
    assert len(set(publish.report_artifact_keys())) == len(publish.report_artifact_keys())
    for key in publish.report_artifact_keys():
        assert re.fullmatch(r"[a-z0-9-]+", key)


def test_json_safe_converts_numpy_decimal_and_missing() -> None:
    assert publish.json_safe(np.int64(3)) == 3 and type(publish.json_safe(np.int64(3))) is int
    assert type(publish.json_safe(np.float32(1.5))) is float
    assert publish.json_safe(Decimal("17.50")) == 17.5
    assert type(publish.json_safe(Decimal("12"))) is int
    for missing in (None, float("nan"), np.nan, pd.NA, pd.NaT, Decimal("NaN")):
        assert publish.json_safe(missing) is None
    assert publish.json_safe(np.bool_(True)) is True
    assert publish.json_safe("Türkiye") == "Türkiye"


def test_report_records_have_exactly_the_report_columns() -> None:
    df = make_reports(share=None)["germany-gmail-share"].assign(extra=1)
    df = df[["extra", "gmail_share_pct", "german_users", "german_gmail_users"]]
    records = publish.report_records("germany-gmail-share", df)
    assert records == [{"german_users": 200, "german_gmail_users": 35, "gmail_share_pct": None}]
    assert list(records[0]) == ["german_users", "german_gmail_users", "gmail_share_pct"]
    json.dumps(records, allow_nan=False)
    with pytest.raises(ValueError, match="lacks columns"):
        publish.report_records("top-gmail-countries", df)


def test_markdown_has_answers_in_words_and_tables(images: dict[str, bytes | None]) -> None:
    md = publish.report_markdown("2024-05-01", 30_000, make_reports(), images)
    assert md.startswith("# User metrics report")
    assert "2024-05-01" in md
    assert "**Records:** 30,000" in md
    assert "35 of 200 users in Germany (17.5 %) use Gmail." in md
    assert "1. Germany (9 Gmail users); 2. France (8 Gmail users); 3. Spain (7 Gmail users)" in md
    assert "1,234 Gmail users are aged 60 or over." in md
    # One markdown table per report, headed by the report's own column names.
    assert "| german_users | german_gmail_users | gmail_share_pct |" in md
    assert "| 200 | 35 | 17.50 |" in md
    assert "| rank | country | gmail_users |" in md
    assert "| 2 | France | 8 |" in md
    assert "| gmail_users_over_60 |" in md
    assert "| 1,234 |" in md
    assert "<" not in md.replace("&lt;", "")  # no HTML: the UI strips it


def test_markdown_without_german_users() -> None:
    reports = make_reports(german_users=0, german_gmail_users=0, share=None)
    md = publish.report_markdown("2024-05-01", 10, reports, {})
    assert "no users in Germany in this batch" in md
    assert "use Gmail." not in md
    assert "| 0 | 0 | n/a |" in md
    assert "nan" not in md.lower()


def test_markdown_with_ties_lists_every_tied_country() -> None:
    md = publish.report_markdown("2024-05-01", 100, make_reports(top=TIED_TOP), {})
    assert "2. France, Spain (10 Gmail users each)" in md
    assert "3. Bosnia & Herzegovina, Italy (9 Gmail users each)" in md
    assert "share a rank" in md
    table_rows = [line for line in md.splitlines() if re.match(r"\| \d \| ", line)]
    assert len(table_rows) == 5
    assert "| 3 | Bosnia & Herzegovina | 9 |" in md


def test_markdown_escapes_markup_in_values() -> None:
    top = pd.DataFrame({"rank": [1], "country": ["A|B *C* <script>"], "gmail_users": [1]})
    md = publish.report_markdown("2024-05-01", 1, make_reports(top=top), {})
    assert "| 1 | A\\|B \\*C\\* &lt;script&gt; | 1 |" in md
    assert "<script>" not in md
    assert "1. A\\|B \\*C\\* &lt;script&gt; (1 Gmail user)." in md


def test_markdown_embeds_images_as_decodable_pngs(images: dict[str, bytes | None]) -> None:
    images = images | {CHART_HISTORY: tiny_png(4, 4)}
    md = publish.report_markdown("2024-05-01", 30_000, make_reports(), images)
    assert "data:image/png;base64," in md
    found = DATA_IMAGE.findall(md)
    assert [alt for alt, _ in found] == [
        "Gmail share in Germany per run date",
        "Top Gmail countries",
        "Gmail users by age group",
    ]
    decoded = [base64.b64decode(data, validate=True) for _, data in found]
    assert all(png.startswith(PNG_MAGIC) for png in decoded)
    assert decoded == [images[CHART_HISTORY], images[CHART_TOP_COUNTRIES], images[CHART_AGE_GROUPS]]
    assert publish.NO_IMAGE_NOTE not in md
    assert len(md.encode()) < 1_000_000


def test_markdown_notes_charts_that_were_not_rendered() -> None:
    images: dict[str, bytes | None] = {CHART_TOP_COUNTRIES: None, CHART_AGE_GROUPS: None}
    md = publish.report_markdown("2024-05-01", 10, make_reports(), images)
    assert md.count("_Chart not rendered: no headless browser available._") == 2
    assert "data:image/" not in md
    # No history chart was built (a single run date): no section, no note.
    assert "per run date" not in md


def test_markdown_stays_under_one_megabyte() -> None:
    big = PNG_MAGIC + bytes(800_000)  # ~1.07 MB once base64-encoded
    images: dict[str, bytes | None] = {CHART_TOP_COUNTRIES: big, CHART_AGE_GROUPS: tiny_png()}
    md = publish.report_markdown("2024-05-01", 10, make_reports(), images)
    assert len(md.encode("utf-8")) < publish.MAX_MARKDOWN_BYTES
    assert publish.OMITTED_IMAGE_NOTE in md
    # The small chart still fits and stays.
    assert len(DATA_IMAGE.findall(md)) == 1


# --- Prefect artifacts ----------------------------------------------------------------------------


@pytest.fixture
def prefect_api(prefect_storage) -> Iterator[None]:
    # the session-wide harness from tests/conftest.py: starting a second one costs ~15 s
    yield


@pytest.mark.slow
def test_composed_reports_become_the_four_artifacts(
    prefect_api: None, images: dict[str, bytes | None]
) -> None:
    hostile = pd.DataFrame({"rank": [3], "country": [HOSTILE_COUNTRIES[0]], "gmail_users": [9]})
    top = pd.concat([TIED_TOP, hostile], ignore_index=True)
    reports = make_reports(top=top, share=None, german_users=0, german_gmail_users=0)

    @flow
    def publish_flow() -> list[str]:
        artifacts = publish.compose_reports("2024-05-01", 30_000, reports, images)
        return publish.create_artifacts(artifacts, [])

    state = publish_flow(return_state=True)
    keys = list(state.result())
    assert keys == list(publish.report_artifact_keys())

    # The harness is shared by the whole session: read this flow run's artifacts only.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}),
        )
    latest = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        latest[artifact.key] = artifact
    assert set(latest) == set(publish.report_artifact_keys())

    for key, columns in ((r.key, r.columns) for r in published_reports()):
        artifact = latest[key]
        assert artifact.type == "table"
        assert artifact.description and "2024-05-01" in artifact.description
        assert artifact.flow_run_id is not None
        table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        assert table, key
        for row in table:
            assert list(row) == list(columns)

    share = json.loads(latest["germany-gmail-share"].data)
    assert share == [{"german_users": 0, "german_gmail_users": 0, "gmail_share_pct": None}]
    top = json.loads(latest["top-gmail-countries"].data)
    assert len(top) == 6 and top[1] == {"rank": 2, "country": "France", "gmail_users": 10}
    # Prefect holds the cells as published: a name as it is, the source's markup inert.
    assert top[4]["country"] == "Bosnia & Herzegovina"
    assert top[5]["country"] == publish.ui_text(HOSTILE_COUNTRIES[0]) != HOSTILE_COUNTRIES[0]

    report = latest["user-metrics-report"]
    assert report.type == "markdown"
    assert "data:image/png;base64," in report.data
    assert "no users in Germany in this batch" in report.data
    _, data = DATA_IMAGE.findall(report.data)[0]
    assert base64.b64decode(data).startswith(PNG_MAGIC)


@pytest.mark.slow
def test_publish_reports_from_an_async_flow(prefect_api: None) -> None:
    # Prefect dispatches artifact helpers to their async versions in async contexts; we must not
    # hand back unawaited coroutines there.
    @flow
    async def async_publish_flow() -> list[str]:
        return publish.create_artifacts(
            publish.compose_reports("2024-05-02", 5, make_reports(), {}), []
        )

    state = asyncio.run(async_publish_flow(return_state=True))
    keys = list(state.result())
    assert keys == list(publish.report_artifact_keys())
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["user-metrics-report"])),
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}),
        )
    assert any("2024-05-02" in (a.data or "") for a in artifacts)


@pytest.mark.slow
def test_an_older_date_publishes_under_its_dated_keys(prefect_api: None) -> None:
    day = dt.date(2001, 1, 5)

    @flow
    def publish_flow() -> list[str]:
        artifacts = publish.compose_reports(day, 5, make_reports(), {})
        return publish.create_artifacts(artifacts, [], dated=day)

    state = publish_flow(return_state=True)
    dated = [f"{key}-2001-01-05" for key in publish.report_artifact_keys()]
    assert state.result() == dated
    assert all(re.fullmatch(r"[a-z0-9-]+", key) for key in dated)  # Prefect's rule for keys
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        )
    # Only the dated keys: the plain keys' latest versions are not this run's.
    assert sorted(a.key for a in artifacts if a.key) == sorted(dated)
    [report] = [a for a in artifacts if a.key == "user-metrics-report-2001-01-05"]
    assert "# User metrics report, 2001-01-05" in str(report.data)


def test_sentences_for_complements_and_unranked_countries() -> None:
    withheld = publish.over_60_sentence(pd.DataFrame({"gmail_users_over_60": ["x"]}))
    assert "withheld (x)" in withheld and "aged 60 or over" in withheld
    empty = pd.DataFrame({"rank": [], "country": [], "gmail_users": []})
    assert publish.top_countries_sentence(empty) == (
        "No country has enough Gmail users in this batch to be ranked."
    )


# --- nothing from the source is markup ------------------------------------------------------------

WORD_JOINER = "\u2060"
# Countries a hostile source could send (issue 20): an image beacon, a markdown image, a script
# link, a form field, a script, a table pipe and a line break.
HOSTILE_COUNTRIES = (
    "Evil <img src=https://evil.example/b.png> ![x](https://evil.example/i.png)",
    "[x](javascript:alert(1)) <input type=password> <script>alert(1)</script> a|b\nc",
)
# Text that must read exactly as written, markdown's punctuation included.
LITERAL_COUNTRIES = (
    "Bosnia & Herzegovina",
    "Côte d’Ivoire",
    "Fake & _under_ *star* <b>bold</b> [bracket] a|b d’Or &amp; x@y.example www.z.example",
)
# A CommonMark renderer with GFM tables (markdown-it-py, which Rich brings): what a markdown
# reader makes of our text, checked without a browser (tests/e2e/test_ui_markup.py opens the UI).
MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
ELEMENTS = re.compile(r"<(img|a|input|script|iframe|form|b|em|strong|code|del)\b([^>]*)>")
# Elements that load, link or take input.
ACTIVE = re.compile(r"<(?:img|a|input|script|iframe|form|object|embed)\b")


def shown(value: str) -> str:
    """A value as it reads once published: on one line."""
    return " ".join(value.split())


def rendered_text(rendered: str) -> str:
    """What a reader sees of rendered HTML: tags dropped, entities decoded, no word joiners."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered)).replace(WORD_JOINER, "")


def test_ui_text_leaves_every_vocabulary_country_and_our_labels_as_they_are() -> None:
    names = sorted({name for _, name in country_pairs()})
    assert len(names) > 240 and "Bosnia & Herzegovina" in names and "Côte d’Ivoire" in names
    ours = [
        "<5",
        "x",
        "n/a",
        "2024-05-01",
        "expect_column_values_to_not_be_null",
        "age_group: 20-year groups; country: continent",
        "1 unexpected field(s) of type string",
    ]
    assert [text for text in [*names, *ours] if publish.ui_text(text) != text] == []
    # ...and each reads as itself: no element, nothing dropped.
    for text in [*names, *ours]:
        rendered = MARKDOWN.renderInline(text)
        assert "<" not in rendered and rendered_text(rendered) == text, text


@pytest.mark.parametrize("value", [*HOSTILE_COUNTRIES, *LITERAL_COUNTRIES])
def test_ui_text_is_read_as_written_and_is_never_markup(value: str) -> None:
    text = publish.ui_text(value)
    assert "\n" not in text and ">" not in text and not re.search(r"<[A-Za-z/!?]", text)
    assert "://" not in text and publish.markup_in(text) is None
    # In a sentence, as a whole document (a table artifact's cell in the classic UI) and in a
    # table cell: text only, exactly the value (not `&amp;amp;`, no backslash left over).
    inline = MARKDOWN.renderInline(text)
    document = MARKDOWN.render(text)
    table = MARKDOWN.render(f"| country | n |\n|---|---|\n| {text} | 1 |\n")
    cells = re.findall(r"<td>(.*?)</td>", table)
    assert "<" not in inline and rendered_text(inline) == shown(value)
    assert document.startswith("<p>") and ELEMENTS.search(document) is None
    assert rendered_text(document).strip() == shown(value)
    assert ELEMENTS.search(table) is None and [rendered_text(c) for c in cells] == [
        shown(value),
        "1",
    ]


def test_composed_reports_hold_no_markup_from_hostile_countries() -> None:
    countries = [*HOSTILE_COUNTRIES, *LITERAL_COUNTRIES]
    top = pd.DataFrame(
        {"rank": [1, 2, 3, 3, 3], "country": countries, "gmail_users": [40, 30, 9, 9, 9]}
    )
    artifacts = {
        a.key: a
        for a in publish.compose_reports(
            "2024-05-01", 1000, make_reports(top=top), {CHART_TOP_COUNTRIES: tiny_png()}
        )
    }
    table = artifacts["top-gmail-countries"]
    # Composed rows hold the values themselves (the leak scan reads them); published ones are inert.
    assert [row["country"] for row in table.table or []] == countries
    published = table.shown_table
    assert [(row["rank"], row["gmail_users"]) for row in published] == [
        (1, 40),
        (2, 30),
        (3, 9),
        (3, 9),
        (3, 9),
    ]
    for row, value in zip(published, countries, strict=True):
        cell = row["country"]
        assert publish.markup_in(cell) is None and ">" not in cell and "\n" not in cell
        assert not re.search(r"<[A-Za-z/!?]|(?<!\\)\||(?<!\\)\]\(", cell), cell
        assert rendered_text(MARKDOWN.render(cell)).strip() == shown(value)
    for name in ("Bosnia & Herzegovina", "Côte d’Ivoire"):
        assert {"rank": 3, "country": name, "gmail_users": 9} in published
    for artifact in artifacts.values():
        assert artifact.shown_description == artifact.description  # ours: nothing to escape

    markdown = artifacts["user-metrics-report"].markdown or ""
    assert publish.markup_in(markdown) is None
    rendered = MARKDOWN.render(markdown)
    # The one element that loads anything is our embedded chart; no value made an element.
    elements = ELEMENTS.findall(rendered)
    assert [tag for tag, _ in elements] == ["strong", "strong", "img"], elements
    assert elements[-1][1].startswith(' src="data:image/png;base64,')
    # The answer and the table read as the values, each once escaped.
    paragraphs = [rendered_text(p) for p in re.findall(r"<p>(.*?)</p>", rendered)]
    assert shown(publish.top_countries_sentence(top)) in paragraphs
    cells = [rendered_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", rendered)]
    assert all(shown(value) in cells for value in countries), cells


def test_answers_are_plain_text_for_the_cli() -> None:
    top = pd.DataFrame(
        {
            "rank": [1, 1],
            "country": ["Bosnia & Herzegovina", "Côte d’Ivoire"],
            "gmail_users": [9, 9],
        }
    )
    assert publish.top_countries_sentence(top) == (
        "Top countries by Gmail users: 1. Bosnia & Herzegovina, Côte d’Ivoire (9 Gmail users "
        "each). Countries with equal counts share a rank."
    )


def test_published_description_and_cells_are_inert_and_composed_ones_are_the_values() -> None:
    artifact = publish.Artifact(
        "k",
        "Run <img src=https://evil.example/b.png>",
        table=[{"n": 1, "text": HOSTILE_COUNTRIES[1], "none": None, "share": 1.5}],
    )
    assert artifact.shown_description == (
        f"Run &lt;img src=https:{WORD_JOINER}//evil.example/b.png&gt;"
    )
    assert artifact.shown_table == [
        {"n": 1, "text": publish.ui_text(HOSTILE_COUNTRIES[1]), "none": None, "share": 1.5}
    ]
    assert (artifact.table or [])[0]["text"] == HOSTILE_COUNTRIES[1]


@pytest.mark.parametrize(
    "markdown",
    [
        "<img src=https://evil.example/b.png>",
        "a <input type=password> b",
        "[x](javascript:alert(1))",
        "![x](https://evil.example/i.png)",
        "![x](data:image/svg+xml;base64,PHN2Zz4=)",
        "\\\\[x\\\\](y)",  # an escaped backslash, then a real link
        "[x]: https://evil.example/",
        "see https://evil.example/",
        "see www.evil.example",
        "write to a@evil.example",
    ],
)
def test_an_artifact_refuses_markdown_with_markup_not_our_own(markdown: str) -> None:
    with pytest.raises(ValueError, match="ui_text") as raised:
        publish.Artifact("k", "d", markdown=markdown)
    assert "evil" not in str(raised.value)  # it names the kind, never the text


def test_an_artifact_takes_our_markup_and_escaped_text() -> None:
    for markdown in (
        "# T\n\n**a** · _b_\n\n| a |\n|---:|\n| 1 |\n\n![c](data:image/png;base64,iVBORw0KGgo=)",
        "\\[x\\](y) and \\\\\\[x\\](y), <5 users",
        publish.ui_text(HOSTILE_COUNTRIES[0]),
    ):
        publish.Artifact("k", "d", markdown=markdown)


def test_the_other_artifacts_escape_what_they_quote() -> None:
    evil = "<img src=https://evil.example/b.png> [x](javascript:alert(1))"
    failure = failure_markdown(
        None, "run-id", "fetch", f"VocabularyError: page 0: {evil}", {}, (), [f"- field {evil}"]
    )
    drift = drift_markdown(
        SchemaChange(added=(f"address.{evil}:string",), removed=()), "ignore", True
    )
    privacy = privacy_artifact("# Privacy\n\nfound <e-mail withheld> and <5\n", "2024-05-01")
    for markdown in (failure, drift, privacy.markdown or ""):
        assert publish.markup_in(markdown) is None, markdown
        rendered = MARKDOWN.render(markdown)
        assert ACTIVE.search(rendered) is None, rendered
    assert f"VocabularyError: page 0: {evil}" in rendered_text(MARKDOWN.render(failure))
    assert f"<li>field {html.escape(evil, quote=False)}</li>" in MARKDOWN.render(failure).replace(
        WORD_JOINER, ""
    )
    assert f"address.{evil}:string" in rendered_text(MARKDOWN.render(drift))
    assert "found <e-mail withheld> and <5" in rendered_text(
        MARKDOWN.render(privacy.markdown or "")
    )


def test_chart_labels_from_the_data_are_not_plotly_markup() -> None:
    countries = [*HOSTILE_COUNTRIES, *LITERAL_COUNTRIES]
    top = pd.DataFrame(
        {"rank": [1, 2, 3, 3, 3], "country": countries, "gmail_users": [40, 30, 9, 9, 9]}
    )
    (bar,) = top_countries_chart(top).data
    # Plotly reads <a href>, <b>, <br> and entities in text: escaped, the labels show as written.
    assert not any(re.search(r"[<>]", label) for label in bar.x)
    assert [html.unescape(label) for label in bar.x] == sorted(countries[:2]) + sorted(
        countries[2:]
    )
    (bar,) = age_group_chart(pd.DataFrame({"age_group": ["<b>[x]</b>"], "gmail_users": [5]})).data
    assert bar.x[-1] == "&lt;b&gt;[x]&lt;/b&gt;"
