"""The per-run `privacy-report` artifact and the privacy columns of pipeline_runs.

Only figures, step names and output/field names appear here, never a value of the batch; every
name goes through `ui_text` all the same.
"""

from __future__ import annotations

from typing import Any

from tasks.privacy.extract import Candidate, ShareableExtract
from tasks.privacy.leak_scan import LeakScanReport
from tasks.privacy.risk import RiskMetrics
from tasks.privacy.suppression import small_cell_note
from tasks.reporting.artifacts import PRIVACY_REPORT_KEY, Artifact, ui_text

_TOP_CANDIDATES = 5


def _pct(share: float) -> str:
    return f"{100 * share:.2f} %"


def _risk(value: float) -> str:
    return f"{value:.4f}"


def _risk_rows(metrics: RiskMetrics, extract: ShareableExtract) -> list[str]:
    both = (metrics, extract.metrics)
    rows = [
        ("records", [f"{m.records:,}" for m in both]),
        ("equivalence classes", [f"{m.classes:,}" for m in both]),
        ("k_min (smallest class)", [f"{m.k_min:,}" for m in both]),
        (f"records in classes below k = {metrics.k}", [f"{m.records_below_k:,}" for m in both]),
        ("share of records below k", [_pct(m.share_below_k) for m in both]),
        ("prosecutor risk, max (1 / k_min)", [_risk(m.prosecutor_risk_max) for m in both]),
        ("prosecutor risk, average over records", [_risk(m.prosecutor_risk_avg) for m in both]),
        ("l-diversity of email_domain, min", [f"{m.l_diversity_min:,}" for m in both]),
        ("l-diversity of email_domain, average", [f"{m.l_diversity_avg:.2f}" for m in both]),
    ]
    lines = ["| figure | analytical table | shareable extract |", "|:---|---:|---:|"]
    lines += [f"| {name} | {a} | {b} |" for name, (a, b) in rows]
    return lines


def _candidate_rows(extract: ShareableExtract) -> list[str]:
    best = sorted(extract.candidates, key=Candidate.rank)[:_TOP_CANDIDATES]
    lines = [
        "| rank | steps | `*` cells | locally suppressed | records removed |",
        "|---:|:---|---:|---:|---:|",
    ]
    for i, c in enumerate(best, 1):
        lines.append(
            f"| {i} | {ui_text(c.steps)} | {c.star_cells:,} | {c.suppressed_cells:,} | "
            f"{c.records_removed:,} |"
        )
    return lines


def _scan_lines(scan: LeakScanReport) -> list[str]:
    lines = [
        f"**Outputs scanned:** {len(scan.outputs_scanned):,} · **Hits:** {scan.hit_count:,}",
        "",
    ]
    if scan.clean:
        lines.append("No raw value of the batch and no e-mail address or phone number was found.")
        return lines
    lines += ["| output | field | kind | count |", "|:---|:---|:---|---:|"]
    lines += [
        f"| {ui_text(h.output)} | {ui_text(h.field)} | {ui_text(h.kind)} | {h.count:,} |"
        for h in scan.hits
    ]
    return lines


def _extract_lines(extract: ShareableExtract) -> list[str]:
    suppressed = ", ".join(
        f"{ui_text(column)} {count:,}" for column, count in extract.suppressed_by_column.items()
    )
    return [
        "## Shareable extract",
        "",
        f"**Rows:** {extract.table.num_rows:,} · **k_min:** {extract.k_min:,} · "
        f"**Locally suppressed cells:** {extract.suppressed_cells:,} · "
        f"**Records removed:** {extract.records_removed:,}",
        "",
        "| quasi-identifier | generalized to |",
        "|:---|:---|",
        *[f"| {ui_text(qi)} | {ui_text(level)} |" for qi, level in extract.steps.items()],
        "",
        f"Suppressed cells by column: {suppressed}.",
        "",
        f"Chosen among {len(extract.candidates)} generalization candidates: the fewest `*` "
        "cells (local suppression plus columns generalized to `*`), then the fewest removed "
        "records, then the lowest generalization levels. Best candidates:",
        "",
        *_candidate_rows(extract),
    ]


def privacy_markdown(
    metrics: RiskMetrics,
    extract: ShareableExtract,
    collapsed: int,
    scan: LeakScanReport,
    run_date: Any = None,
    records_collapsed: int | None = None,
) -> str:
    """The privacy-report markdown: risk, domain collapse, the extract's steps and the leak scan."""
    title = f"# Privacy report, {ui_text(run_date)}" if run_date is not None else "# Privacy report"
    affected = f" ({records_collapsed:,} records)" if records_collapsed is not None else ""
    qis = ui_text(", ".join(metrics.quasi_identifiers))
    lines = [
        title,
        "",
        f"**k:** {metrics.k} · **Quasi-identifiers:** {qis} · "
        f"**Leak scan:** {'clean' if scan.clean else 'FAILED'}",
        "",
        "## Re-identification risk",
        "",
        "The analytical table (persons_anonymized) is pseudonymized internal data: with about 250 "
        "countries it cannot be k-anonymous without destroying the reports, and these figures say "
        "how risky it is. The shareable extract (persons_shareable) is k-anonymous on the "
        "quasi-identifiers.",
        "",
        *_risk_rows(metrics, extract),
        "",
        "## Rare email domains",
        "",
        f"{collapsed:,} email domains with fewer than {metrics.k} users in the batch became "
        f"`other`{affected}; gmail.com, hotmail.com and yahoo.com are always kept, so the "
        "reports' answers do not change.",
        "",
        *_extract_lines(extract),
        "",
        "## Leak scan",
        "",
        *_scan_lines(scan),
        "",
        "## Published reports",
        "",
        ui_text(small_cell_note(metrics.k)),
    ]
    return "\n".join(lines).rstrip() + "\n"


def privacy_run_columns(
    metrics: RiskMetrics,
    extract: ShareableExtract,
    collapsed: int,
    scan: LeakScanReport | None = None,
    records_collapsed: int | None = None,
) -> dict[str, Any]:
    """Every privacy column of pipeline_runs (tasks/sql/0002_privacy.sql), ready for finish_run."""
    columns: dict[str, Any] = {
        "privacy_k": metrics.k,
        "risk_quasi_identifiers": ",".join(metrics.quasi_identifiers),
        **metrics.as_run_columns(),
        "domains_collapsed": collapsed,
        **extract.as_run_columns(),
    }
    if records_collapsed is not None:
        columns["records_domain_collapsed"] = records_collapsed
    if scan is not None:
        columns.update(scan.as_run_columns())
    return columns


def privacy_artifact(markdown: str, run_date: Any) -> Artifact:
    """The `privacy-report` markdown artifact, composed (created after the run's commit)."""
    description = f"Re-identification risk, shareable extract and leak scan, run {run_date}."
    # The caller redacts the markdown, and `redact` writes what it withholds as
    # `<e-mail withheld>`, which markdown would take for an HTML tag; our markdown holds no tag.
    markdown = markdown.replace("<", "&lt;")
    return Artifact(PRIVACY_REPORT_KEY, description, markdown=markdown)
