"""Schema drift between runs: compare this run's source signature with the last successful one."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.ingest.source_schema import UNEXPECTED, SchemaDriftError
from tasks.reporting.artifacts import ui_text


def entry_text(entry: str) -> str:
    """A signature entry for people: `path:type`, or `N unexpected field(s) of type T`."""
    if entry.startswith(f"{UNEXPECTED}:"):
        kind, _, count = entry.removeprefix(f"{UNEXPECTED}:").partition("=")
        return f"{count} unexpected field(s) of type {kind}"
    return entry


@dataclass(frozen=True)
class SchemaChange:
    """Fields (as `path:type`) that appeared or disappeared since the last successful run."""

    added: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def additive(self) -> bool:
        """Only new fields: nothing we had is gone or retyped."""
        return not self.removed

    def describe(self) -> str:
        """One line: what changed."""
        parts = []
        if self.added:
            parts.append("added " + ", ".join(map(entry_text, self.added)))
        if self.removed:
            parts.append("removed " + ", ".join(map(entry_text, self.removed)))
        return "; ".join(parts)


def signature_fields(signature: str) -> set[str]:
    """The `path:type` entries of a stored signature (pages with different shapes join by |)."""
    return {f for part in signature.split(" | ") for f in part.split(",") if f}


def compare_signatures(previous: str | None, current: str) -> SchemaChange | None:
    """The change from `previous` to `current`, or None when equal or there is no previous run."""
    if not previous:
        return None
    before, after = signature_fields(previous), signature_fields(current)
    if before == after:
        return None
    return SchemaChange(added=tuple(sorted(after - before)), removed=tuple(sorted(before - after)))


def accepts(change: SchemaChange | None, policy: str) -> bool:
    """Whether SCHEMA_DRIFT_POLICY lets a run with this change go on to loading."""
    return change is None or policy == "ignore" or (policy == "additive" and change.additive)


def enforce_policy(change: SchemaChange | None, policy: str) -> None:
    """Raise SchemaDriftError if the policy does not accept the change."""
    if change is None or accepts(change, policy):
        return
    raise SchemaDriftError(
        f"source schema changed since the last successful run ({change.describe()}); "
        f"SCHEMA_DRIFT_POLICY={policy} stops the run before loading"
    )


def drift_markdown(change: SchemaChange, policy: str, accepted: bool) -> str:
    """The `schema-drift` artifact: what changed and what the run did about it."""
    # Field paths are the source's text: inert markdown, not code spans (a backtick would end one).
    rows = [f"| added | {ui_text(entry_text(f))} |" for f in change.added] + [
        f"| removed | {ui_text(entry_text(f))} |" for f in change.removed
    ]
    verdict = "continued" if accepted else "stopped before loading"
    return "\n".join(
        [
            "# Source schema drift",
            "",
            f"The source's shape differs from the last successful run. Policy "
            f"`SCHEMA_DRIFT_POLICY={policy}`: the run **{verdict}**.",
            "",
            "| change | field:type |",
            "|---|---|",
            *rows,
        ]
    )
