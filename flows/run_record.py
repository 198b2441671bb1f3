"""What a run has done so far: its step, its figures (one field per pipeline_runs column), the
artifacts it published, and the hashes of its raw values for the leak scan.

It lives with the flow, above the concern packages, because it holds the privacy package's leak
scanner; `tasks/` never sees it (steps get plain values and return their figures).

The figures are a typed record, not a dict passed around: each step sets the fields it owns,
and the record turns into pipeline_runs columns in one place. Step timings come from one
helper (`RunRecord.entered` / `timed`), never from hand-written timer pairs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tasks.privacy.leak_scan import LeakScanner, SecretHashes


@dataclass
class RunFigures:
    """A run's figures; None until the step that measures one has run."""

    hash_key_id: str | None = None
    records_fetched: int | None = None
    records_loaded: int | None = None
    pages: int | None = None
    retries: int | None = None
    source_schema: str | None = None
    schema_change: str | None = None
    domains_collapsed: int | None = None
    records_domain_collapsed: int | None = None
    # re-identification risk of the analytical batch (tasks.privacy.risk)
    privacy_k: int | None = None
    risk_quasi_identifiers: str | None = None
    k_min: int | None = None
    equivalence_classes: int | None = None
    records_below_k: int | None = None
    share_below_k: float | None = None
    prosecutor_risk_max: float | None = None
    prosecutor_risk_avg: float | None = None
    l_diversity_min: int | None = None
    l_diversity_avg: float | None = None
    # the shareable extract (tasks.privacy.extract)
    extract_k_min: int | None = None
    extract_records: int | None = None
    extract_suppressed_cells: int | None = None
    extract_records_removed: int | None = None
    extract_steps: str | None = None
    # the leak scan (tasks.privacy.leak_scan)
    leak_outputs_scanned: int | None = None
    leak_hits: int | None = None
    leak_hit_fields: str | None = None
    # step -> seconds, stored as seconds_<step> columns
    seconds: dict[str, float] = field(default_factory=dict)

    def update(self, columns: Mapping[str, Any]) -> None:
        """Set figures from pipeline_runs column names (a step's own `as_run_columns()`)."""
        for name, value in columns.items():
            if name == "seconds" or not hasattr(self, name):
                raise AttributeError(f"RunFigures has no figure {name!r}")
            setattr(self, name, value)

    def as_columns(self) -> dict[str, Any]:
        """Every figure set so far, as pipeline_runs columns."""
        columns = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "seconds" and getattr(self, f.name) is not None
        }
        columns.update({f"seconds_{step}": value for step, value in self.seconds.items()})
        return columns


@dataclass
class RunRecord:
    """A run in progress: where it is, what it measured, what it published."""

    run_id: str
    step: str = "start"
    figures: RunFigures = field(default_factory=RunFigures)
    published: list[str] = field(default_factory=list)  # artifact keys, as created
    details: list[str] = field(default_factory=list)  # value-free lines for a failure report
    secrets: list[SecretHashes] = field(default_factory=list)  # hashes of the raw values
    # The e-mail domains the domain rule kept in this batch: kept on purpose, never secrets.
    kept_domains: frozenset[str] = frozenset()
    started: float = field(default_factory=time.perf_counter)
    _scanner: LeakScanner | None = None

    @contextmanager
    def entered(self, step: str) -> Iterator[None]:
        """Enter a step: a failure names it, its seconds add up, freed Arrow memory returns."""
        # Arrow's allocators keep freed pages for reuse (mimalloc for good, jemalloc for a
        # while): without handing them back, a step's transient peak is carried into the next.
        pa.default_memory_pool().release_unused()
        self.step = step
        with self.timed(step):
            yield

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's seconds to the figure `seconds_<name>`."""
        key = name.replace("-", "_")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(key, time.perf_counter() - started)

    def add_seconds(self, name: str, seconds: float) -> None:
        """Add seconds measured elsewhere (inside a task) to `seconds_<name>`."""
        self.figures.seconds[name] = self.figures.seconds.get(name, 0.0) + seconds

    def stop_clock(self) -> None:
        """Record the run's total seconds so far."""
        self.figures.seconds["total"] = time.perf_counter() - self.started

    def scanner(self, run_date: dt.date) -> LeakScanner:
        """The leak scanner over this run's raw-value hashes (built once, when first needed)."""
        if self._scanner is None:
            self._scanner = LeakScanner(self.secrets, run_date, self.kept_domains)
            self.secrets = []  # merged into the scanner's index; no need to hold them twice
        return self._scanner

    def has_secrets(self) -> bool:
        """Whether any raw-value hashes were taken (the run got as far as masking)."""
        return self._scanner is not None or bool(self.secrets)
