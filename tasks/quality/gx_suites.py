"""Great Expectations plumbing: one lazy import, one ephemeral context, strict suite loading.

`import great_expectations` is the longest import of a run (`start-up: GX s` in bench/results.md),
so nothing here imports it at module import time; the first caller pays once per process and
everyone after reuses the module, the context and the suites.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tasks.common.errors import PipelineError

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.data_context.data_context.ephemeral_data_context import (
        EphemeralDataContext,
    )

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
DATASOURCE_NAME = "persons_frames"

# Keys of a suite file that ExpectationSuite() takes; "id" is left out because an ephemeral context
# owns no stored suites it could refer to.
_SUITE_KEYS = ("name", "expectations", "suite_parameters", "meta", "notes")

# One re-entrant lock guards the lazy initialisation and every validation: GX builds batch ids from
# datasource and asset names, so two threads validating on one asset would overwrite each other's
# batch, and the context's registries are not documented as thread-safe either.
LOCK = threading.RLock()

_gx: ModuleType | None = None
_context: EphemeralDataContext | None = None
_batch_definitions: dict[str, BatchDefinition[Any]] = {}
_suites: dict[Path, ExpectationSuite] = {}


class SuiteLoadError(PipelineError, ValueError):
    """A suite file GX would load only in part (or not at all)."""


def gx() -> ModuleType:
    """The `great_expectations` module, imported on first use only."""
    global _gx
    if _gx is None:
        with LOCK:
            if _gx is None:
                import great_expectations

                _gx = great_expectations
    return _gx


def context() -> EphemeralDataContext:
    """The process-wide ephemeral context: in-memory stores, no analytics, no progress bars."""
    global _context
    if _context is None:
        with LOCK:
            if _context is None:
                gx()
                from great_expectations.data_context.types.base import (
                    DataContextConfig,
                    InMemoryStoreBackendDefaults,
                    ProgressBarsConfig,
                )

                # The default ephemeral config writes temporary data-docs sites and enables
                # analytics (which would try the network); tqdm bars only clutter flow logs.
                config = DataContextConfig(
                    store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                    analytics_enabled=False,
                    progress_bars=ProgressBarsConfig(globally=False),
                )
                _skip_data_fingerprint()
                ctx = gx().get_context(mode="ephemeral", project_config=config)
                ctx.data_sources.add_pandas(DATASOURCE_NAME)
                _context = ctx
    return _context


def _skip_data_fingerprint() -> None:
    """Turn off GX's md5 fingerprint of every pandas batch (hashes each row of the frame).

    It is only a batch marker, which we never read (results are reduced to counts), yet on a
    million rows it costs seconds and a transient copy of the frame. GX hashes frames whose
    memory_usage() is below HASH_THRESHOLD, so a threshold of 0 skips it; if a GX release drops
    the constant, validation still works, only slower.
    """
    from great_expectations.execution_engine import pandas_execution_engine

    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0


def release(batch: Any) -> None:
    """Drop what GX keeps of a validated batch: its dataframe and every metric computed on it.

    The datasource's execution engine holds each batch's data and caches every resolved metric
    (per-row condition series included) for the life of the process. After a million-row
    validation that is hundreds of MB carried through the rest of the run, and in a worker
    process that serves many runs it only grows. Results are already copied out as counts.
    """
    engine = batch.data.execution_engine
    engine.batch_manager.reset_batch_cache()
    engine.batch_manager.batch_data_cache.clear()
    # No public API for the metric cache; if a GX release renames it, memory only stays longer.
    cache = getattr(engine, "_metric_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def batch_definition(asset_name: str) -> BatchDefinition[Any]:
    """A whole-dataframe batch definition on its own pandas asset, created once per process."""
    with LOCK:
        found = _batch_definitions.get(asset_name)
        if found is None:
            datasource = context().data_sources.get(DATASOURCE_NAME)
            # The registry hands back the base Datasource type; ours is the pandas one (made in
            # `context()`), which has add_dataframe_asset.
            asset = datasource.add_dataframe_asset(asset_name)  # type: ignore[attr-defined]
            found = asset.add_batch_definition_whole_dataframe(f"{asset_name}_whole")
            _batch_definitions[asset_name] = found
        return found


def _declared_types(path: Path, data: Any) -> list[str]:
    """Expectation types a suite file declares, after checking the file's basic shape."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise SuiteLoadError(f"{path}: a suite file is a JSON object with a non-empty 'name'")
    entries = data.get("expectations")
    if not isinstance(entries, list):
        raise SuiteLoadError(f"{path}: 'expectations' must be a list")
    types = []
    for position, entry in enumerate(entries):
        # GX 0.x spelled the key "expectation_type"; GX 1.x raises a bare TypeError on it.
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise SuiteLoadError(f"{path}: expectation #{position} has no string 'type' (GX 1.x)")
        types.append(entry["type"])
    return types


def _rejected_types(data: dict[str, Any]) -> list[str]:
    """Types of the expectations GX cannot build, found by building them one at a time."""
    from great_expectations.core import ExpectationSuite

    rejected = []
    for entry in data["expectations"]:
        try:
            built = ExpectationSuite(name=data["name"], expectations=[entry])
        except Exception:  # the error itself is reported by the caller
            rejected.append(entry["type"])
        else:
            if not built.expectations:
                rejected.append(entry["type"])
    return rejected


def load_suite_file(path: Path | str) -> tuple[ExpectationSuite, int]:
    """Load a suite JSON file and fail loudly unless GX understood every expectation in it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SuiteLoadError(f"{path}: cannot read suite file: {exc}") from exc
    declared = _declared_types(path, data)

    gx()
    from great_expectations.core import ExpectationSuite

    try:
        suite = ExpectationSuite(**{key: data[key] for key in _SUITE_KEYS if key in data})
    except Exception as exc:  # GX raises assorted types (TypeError, ValueError, pydantic errors)
        culprits = ", ".join(_rejected_types(data)) or "(the suite itself)"
        raise SuiteLoadError(f"{path}: GX rejected the suite at {culprits}: {exc}") from exc

    # GX drops an expectation it cannot build (unknown type, bad kwargs) with only a log line, so
    # compare what the file declares with what the suite holds.
    loaded = [expectation.expectation_type for expectation in suite.expectations]
    dropped = Counter(declared) - Counter(loaded)
    if dropped or len(loaded) != len(declared):
        names = ", ".join(sorted(dropped)) or "(unidentified)"
        raise SuiteLoadError(
            f"{path}: GX did not understand {len(declared) - len(loaded)} of {len(declared)} "
            f"expectations (unknown type or invalid kwargs): {names}"
        )
    return suite, len(declared)


def suite(path: Path | str) -> ExpectationSuite:
    """The suite from `path`, loaded and checked once per process."""
    resolved = Path(path).resolve()
    with LOCK:
        found = _suites.get(resolved)
        if found is None:
            found, _ = load_suite_file(resolved)
            _suites[resolved] = found
        return found
