"""The report as people read it (markdown with charts) and its publication as Prefect artifacts."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.common.reports import (
    CHART_AGE_GROUPS,
    CHART_HISTORY,
    CHART_TOP_COUNTRIES,
    GERMANY_GMAIL_SHARE,
    GMAIL_USERS_OVER_60,
    TOP_GMAIL_COUNTRIES,
    published_reports,
    registered,
    report,
)
from tasks.common.schemas import OLDER_AGE
from tasks.privacy.suppression import SECONDARY_LABEL

# The markdown report with every published report (tasks.common.reports) and the charts.
USER_METRICS_REPORT = "user-metrics-report"

# Keys of the artifacts a run publishes besides the reports, and of a failed run's report.
VALIDATION_ARTIFACT_KEY = "validation-results"
DRIFT_ARTIFACT_KEY = "schema-drift"
PRIVACY_REPORT_KEY = "privacy-report"
FAILURE_ARTIFACT_KEY = "run-failure"


def report_artifact_keys() -> tuple[str, ...]:
    """The keys of the report artifacts a run publishes: each published report's, the markdown's."""
    # Stable keys, so the Prefect UI shows each report's history.
    return (*(entry.key for entry in published_reports()), USER_METRICS_REPORT)


def run_artifact_keys() -> tuple[str, ...]:
    """Every key a successful run publishes, in the order the CLI lists them."""
    return (*report_artifact_keys(), VALIDATION_ARTIFACT_KEY, PRIVACY_REPORT_KEY)


def dated_key(key: str, run_date: dt.date) -> str:
    """The per-date key a run of an older date than the newest committed one publishes under."""
    # The plain keys' latest versions stay the newest date's: a backfill must not replace them.
    return f"{key}-{run_date.isoformat()}"


# Our cap on the markdown artifact: base64 images make it large and the UI renders it whole.
MAX_MARKDOWN_BYTES = 1_000_000

NO_IMAGE_NOTE = "_Chart not rendered: no headless browser available._"
OMITTED_IMAGE_NOTE = "_Chart left out: the report would exceed its 1 MB size limit._"

_ALT_TEXT = {
    CHART_TOP_COUNTRIES: "Top Gmail countries",
    CHART_AGE_GROUPS: "Gmail users by age group",
    CHART_HISTORY: "Gmail share in Germany per run date",
}

_MISSING = "n/a"


# --- text for the Prefect UI ----------------------------------------------------------------------

# The Prefect UI renders markdown artifacts and every artifact description as markdown. Its classic
# UI (prefect-design's PMarkdownRenderer: marked; raw HTML through DOMPurify, which keeps <img> and
# <input>; links with any scheme) renders each string cell of a table artifact as markdown too;
# the newer UI (react-markdown with GFM, rehype-raw and rehype-sanitize, which also keeps external
# <img>) shows table cells as plain text. So every text that is not our own markup is made inert
# markdown, changing only what could be markup: a CLDR country name, a snake_case name or a "<5"
# label comes out as it went in, and reads the same in both UIs.
_WORD_JOINER = "\u2060"
# Control characters and line breaks: one line, so that no text can start a block of its own.
_SPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_MARKUP = re.compile(
    r"[\\`*~\[\]|>]"  # escapes, code, emphasis, strikethrough, links/images, tables, quotes
    r"|<(?=[A-Za-z/!?])"  # where an HTML tag, comment or autolink could start ("<5" cannot)
    r"|&(?=#?[A-Za-z0-9]+;)"  # an entity, which would be shown as the character it names
    r"|(?<![^\W_])_|_(?![^\W_])"  # _ except between letters or digits (no emphasis there)
    # GFM turns bare URLs and e-mail addresses into links even when their punctuation is
    # backslash-escaped; an invisible word joiner is the one break both UIs honour.
    r"|:(?=//)|@|(?i:www)(?=\.)"
)
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
# What starts a heading, a list or a numbered list at the start of a line.
_BLOCK_MARKER = re.compile(r"^([#+-]|\d{1,9}(?=[.)]))")


def _inert(match: re.Match[str]) -> str:
    found = match.group()
    if found in _ENTITIES:
        return _ENTITIES[found]
    if found in (":", "@") or found.lower() == "www":
        return found + _WORD_JOINER
    return "\\" + found


def ui_text(value: Any) -> str:
    """Any value as markdown the Prefect UI shows literally, on one line: never markup."""
    text = _MARKUP.sub(_inert, _SPACE.sub(" ", str(value)).strip())
    marker = _BLOCK_MARKER.match(text)
    if marker is None:
        return text
    if marker.group().isdigit():  # "1." or "1)": escape the dot or parenthesis
        return text[: marker.end()] + "\\" + text[marker.end() :]
    return "\\" + text


# Markup our own markdown never holds, so a body that holds it was composed without ui_text.
_RAW_MARKUP = (
    ("raw HTML", re.compile(r"<[A-Za-z/!?]")),
    # A `]` after an even number of backslashes (none included) is markup; `](` and `]:` make a
    # link, an image or a link definition. Our one kind: a chart embedded as a PNG data URI.
    (
        "a link or an image that is not an embedded PNG",
        re.compile(r"(?<!\\)(?:\\\\)*\](?:\((?!data:image/png;base64,[A-Za-z0-9+/=]*\))|:)"),
    ),
    ("a bare URL or e-mail address", re.compile(r"(?i)://|(?<![\w.])www\.|[\w.+-]@[\w-]")),
)


def markup_in(markdown: str) -> str | None:
    """What markup from outside our own the markdown holds (raw HTML, a link...), or None."""
    for kind, pattern in _RAW_MARKUP:
        if pattern.search(markdown):
            return kind
    return None


# --- values ---------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def json_safe(value: Any) -> Any:
    """A JSON-serialisable Python value: numpy/decimal to int/float, NaN/NA to None."""
    if _is_missing(value):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        # DuckDB hands sums and rounded shares back as DECIMAL; keep whole counts as int.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, pd.Timestamp | dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def report_records(key: str, df: pd.DataFrame) -> list[dict[str, Any]]:
    """The report's rows as JSON-safe dicts with exactly its columns, in its column order."""
    columns = report(key).columns
    if missing := [c for c in columns if c not in df.columns]:
        raise ValueError(f"report {key!r} lacks columns {missing}; it has {list(df.columns)}")
    return [
        {c: json_safe(v) for c, v in zip(columns, row, strict=True)}
        for row in df.loc[:, list(columns)].itertuples(index=False, name=None)
    ]


def _int(value: Any) -> int:
    safe = json_safe(value)
    return int(safe) if safe is not None else 0


def _hidden(value: Any) -> bool:
    # Small-cell suppression replaces a count with a label such as "<5" (or "x" for a complement).
    return isinstance(value, str)


def _count(value: Any) -> str:
    return str(value) if _hidden(value) else f"{_int(value):,}"


def _cell(value: Any) -> str:
    value = json_safe(value)
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return ui_text(value)


def markdown_table(records: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A GitHub-style markdown table; numbers right-aligned, missing values as n/a."""
    # Column names are our own snake_case identifiers; GFM leaves intraword underscores alone.
    header = "| " + " | ".join(columns) + " |"
    numeric = [
        all(isinstance(r[c], int | float) or r[c] is None for r in records) and bool(records)
        for c in columns
    ]
    rule = "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"
    rows = ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in records]
    if not rows:
        rows = ["| " + " | ".join(_MISSING for _ in columns) + " |"]
    return "\n".join([header, rule, *rows])


# --- answers in words -----------------------------------------------------------------------------


def germany_share_sentence(df: pd.DataFrame) -> str:
    """The Germany Gmail share as a sentence, including no German users and hidden small cells."""
    none = "There are no users in Germany in this batch, so there is no Gmail share."
    if df.empty:
        return none
    row = df.iloc[0]
    german, gmail = row["german_users"], row["german_gmail_users"]
    if _hidden(german) or _hidden(gmail):
        return (
            f"{_count(gmail)} of {_count(german)} users in Germany use Gmail "
            "(the share is not shown: a count is below the small-cell threshold)."
        )
    share = json_safe(row["gmail_share_pct"])
    if _int(german) == 0 or share is None:
        return none
    people = "user" if _int(german) == 1 else "users"
    return (
        f"{_int(gmail):,} of {_int(german):,} {people} in Germany ({float(share):.1f} %) use Gmail."
    )


def top_countries_sentence(df: pd.DataFrame) -> str:
    """The top countries by Gmail users as a sentence; tied countries are named together."""
    if df.empty:
        # Countries below the small-cell threshold are not ranked, so this also covers a batch
        # whose Gmail users are spread thinly.
        return "No country has enough Gmail users in this batch to be ranked."
    parts = []
    for rank, group in df.sort_values(["rank", "country"]).groupby("rank", sort=True):
        countries = [str(c) for c in group["country"]]
        users = group["gmail_users"].iloc[0]
        noun = "Gmail user" if not _hidden(users) and _int(users) == 1 else "Gmail users"
        each = " each" if len(countries) > 1 else ""
        parts.append(f"{_int(rank)}. {', '.join(countries)} ({_count(users)} {noun}{each})")
    tie = " Countries with equal counts share a rank." if df["rank"].duplicated().any() else ""
    return "Top countries by Gmail users: " + "; ".join(parts) + "." + tie


def over_60_sentence(df: pd.DataFrame) -> str:
    """The number of Gmail users aged 60 (OLDER_AGE) or over as a sentence."""
    count = df["gmail_users_over_60"].iloc[0] if not df.empty else 0
    if isinstance(count, str) and count == SECONDARY_LABEL:
        return (
            f"The number of Gmail users aged {OLDER_AGE} or over is withheld ({count}): with the "
            "age chart it would give away a small count."
        )
    if not _hidden(count) and _int(count) == 1:
        return f"1 Gmail user is aged {OLDER_AGE} or over."
    return f"{_count(count)} Gmail users are aged {OLDER_AGE} or over."


# The answers in words (the CLI prints them too); a report without one shows its table only.
SENTENCES = {
    GERMANY_GMAIL_SHARE.key: germany_share_sentence,
    TOP_GMAIL_COUNTRIES.key: top_countries_sentence,
    GMAIL_USERS_OVER_60.key: over_60_sentence,
}


def answers(reports: Mapping[str, pd.DataFrame]) -> list[str]:
    """The published reports' answers in words, in order."""
    return [
        SENTENCES[entry.key](reports[entry.key])
        for entry in published_reports()
        if entry.key in SENTENCES
    ]


# --- markdown -------------------------------------------------------------------------------------


def _image_block(name: str, png: bytes | None, omitted: set[str]) -> str:
    if name in omitted:
        return OMITTED_IMAGE_NOTE
    if png is None:
        return NO_IMAGE_NOTE
    encoded = base64.b64encode(png).decode("ascii")
    return f"![{ui_text(_ALT_TEXT.get(name, name))}](data:image/png;base64,{encoded})"


def _compose(
    run_date: Any,
    records: int,
    reports: Mapping[str, pd.DataFrame],
    images: Mapping[str, bytes | None],
    omitted: set[str],
    note: str | None = None,
) -> str:
    # Every piece that is not our own markup goes through ui_text, once: the sentences are plain
    # text (the CLI prints them as they are), table cells are escaped by _cell.
    date = ui_text(run_date)
    lines = [
        f"# User metrics report, {date}",
        "",
        f"**Run date:** {date} · **Records:** {records:,}",
        "",
    ]
    for entry in published_reports():
        df = reports[entry.key]
        lines += [f"## {entry.title}", ""]
        if (sentence := SENTENCES.get(entry.key)) is not None:
            lines += [ui_text(sentence(df)), ""]
        lines += [markdown_table(report_records(entry.key, df), entry.columns), ""]
        lines += [
            line
            for chart in entry.charts
            if chart in images
            for line in (_image_block(chart, images[chart], omitted), "")
        ]
    # Charts the caller rendered beyond the declared ones still belong in the report.
    declared = {chart for entry in registered() for chart in entry.charts}
    for name, png in images.items():
        if name not in declared:
            lines += [_image_block(name, png, omitted), ""]
    if note:
        lines += ["---", "", f"_{ui_text(note)}_", ""]
    return "\n".join(lines).rstrip() + "\n"


def report_markdown(
    run_date: Any,
    records: int,
    reports: Mapping[str, pd.DataFrame],
    images: Mapping[str, bytes | None],
    note: str | None = None,
) -> str:
    """The markdown report: answers in words, tables and embedded PNG charts, under 1 MB."""
    omitted: set[str] = set()
    markdown = _compose(run_date, records, reports, images, omitted, note)
    # Drop the largest images first until the report fits; text and tables always stay.
    by_size = sorted((n for n, p in images.items() if p), key=lambda n: -len(images[n] or b""))
    while len(markdown.encode("utf-8")) >= MAX_MARKDOWN_BYTES and by_size:
        omitted.add(by_size.pop(0))
        markdown = _compose(run_date, records, reports, images, omitted, note)
    size = len(markdown.encode("utf-8"))
    if size >= MAX_MARKDOWN_BYTES:
        raise ValueError(f"report markdown is {size:,} bytes even without charts")
    return markdown


# --- publishing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """An artifact composed in memory; nothing is visible until `create` (after the commit).

    `description` and the cells of `table` are plain text as composed (so the leak scan reads the
    values themselves); they reach Prefect through `ui_text`, in `create` and nowhere else.
    `markdown` is our own markup with every other piece already through `ui_text`: a body that
    holds raw HTML, a link or an external image is refused here, when it is composed.
    """

    key: str
    description: str
    markdown: str | None = None
    table: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.markdown is not None and (kind := markup_in(self.markdown)) is not None:
            raise ValueError(
                f"artifact {self.key!r}: its markdown holds {kind}; "
                "text that is not our own markup must go through ui_text"
            )

    @property
    def text(self) -> str | list[dict[str, Any]]:
        """What the artifact shows: its markdown or its rows."""
        return self.markdown if self.markdown is not None else (self.table or [])

    @property
    def shown_description(self) -> str:
        """The description as published: inert markdown (the UI renders descriptions)."""
        return ui_text(self.description)

    @property
    def shown_table(self) -> list[dict[str, Any]]:
        """The rows as published: every string cell inert markdown, other values unchanged."""
        return [
            {column: ui_text(v) if isinstance(v, str) else v for column, v in row.items()}
            for row in self.table or []
        ]

    def create(self, key: str | None = None) -> str:
        """Create the artifact in the current flow run, under `key` if given; return the key."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate
        from prefect.runtime import flow_run, task_run

        key = key or self.key
        # Through Prefect's sync client, as its own sync artifact helpers do: those helpers hand
        # a caller in an async flow or task a coroutine to await, and this caller is sync.
        # Table data is JSON text, as create_table_artifact stores it (a NaN cell as null).
        rows = [{c: json_safe(v) for c, v in row.items()} for row in self.shown_table]
        kind, data = (
            ("markdown", self.markdown)
            if self.markdown is not None
            else ("table", json.dumps(rows))
        )
        artifact = ArtifactCreate(
            type=kind,
            key=key,
            description=self.shown_description,
            data=data,
            flow_run_id=flow_run.id,
            task_run_id=task_run.id,
        )
        with get_client(sync_client=True) as client:
            client.create_artifact(artifact)
        return key


def create_artifacts(
    artifacts: Sequence[Artifact], created: list[str], dated: dt.date | None = None
) -> list[str]:
    """Create each artifact in order, appending its key to `created` as it goes; under the
    per-date keys of `dated` (`dated_key`) when it is given."""
    for artifact in artifacts:
        key = dated_key(artifact.key, dated) if dated is not None else artifact.key
        created.append(artifact.create(key))
    return created


def compose_reports(
    run_date: Any,
    records: int,
    reports: Mapping[str, pd.DataFrame],
    images: Mapping[str, bytes | None],
    note: str | None = None,
) -> list[Artifact]:
    """A table artifact per published report and the markdown report, composed, not created."""
    artifacts = [
        Artifact(
            entry.key,
            entry.description.format(run_date=run_date),
            table=report_records(entry.key, reports[entry.key]),
        )
        for entry in published_reports()
    ]
    markdown = report_markdown(run_date, records, reports, images, note)
    description = f"User metrics report with charts, run {run_date}, {records:,} records."
    artifacts.append(Artifact(USER_METRICS_REPORT, description, markdown=markdown))
    return artifacts
