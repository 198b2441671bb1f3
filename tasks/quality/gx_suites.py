"""Great Expectations plumbing: one lazy import, a context per validation, strict suite loading.

`import great_expectations` is the longest import of a run (`start-up: GX s` in bench/results.md),
so nothing here imports it at module import time; the first caller pays once per process.

A batch is validated the way GX's docs run production validations: a `ValidationDefinition` (the
suite on a whole-dataframe batch definition) run by a `Checkpoint` whose `UpdateDataDocsAction`
updates a local Data Docs site. The context is configured with the mapping a
`great_expectations.yml` would hold (`project_config`), and a new one is made for each
validation: it costs tens of milliseconds, and dropping it drops the frame and every metric GX
computed on it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tasks.common.errors import PipelineError

if TYPE_CHECKING:
    from great_expectations import Checkpoint
    from great_expectations.core import ExpectationSuite
    from great_expectations.data_context.data_context.abstract_data_context import (
        AbstractDataContext,
    )

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
DATASOURCE_NAME = "persons_frames"
DATA_DOCS_SITE = "persons"
# Inside the GX folder (RunConfig.gx_dir): the Data Docs site, and the counts-only validation
# results its pages are rendered from (kept so that the site's index lists the latest runs).
DATA_DOCS_DIR = "data_docs"
VALIDATIONS_DIR = "validations"

# Validation results kept per suite (the latest; older ones and their pages are removed): the
# site's index reads every stored result on each update, so an unbounded history would make
# every validation slower, run after run.
RUNS_KEPT = 20

# How the leak scan names a file of the GX folder (`run_files`): this, then its path in the folder.
FILES_LABEL = "Data Docs "

# BASIC still reports counts; exclude_unexpected_values drops the partial_unexpected_list that
# would otherwise carry the failing values (raw PII, if a mask was missed) into the results, and
# from there into the stored results and the Data Docs pages rendered from them.
RESULT_FORMAT: dict[str, Any] = {"result_format": "BASIC", "exclude_unexpected_values": True}

# Keys of a suite file that ExpectationSuite() takes; "id" is left out because the context
# assigns one when the suite is added.
_SUITE_KEYS = ("name", "expectations", "suite_parameters", "meta", "notes")

# One re-entrant lock guards the lazy initialisation and every validation: GX 1.x reaches its
# stores through a process-wide project (the context `get_context` made last), so two contexts
# must never be in use at once.
LOCK = threading.RLock()

_gx: ModuleType | None = None
_suites: dict[Path, tuple[ExpectationSuite, dict[str, Any]]] = {}


class SuiteLoadError(PipelineError, ValueError):
    """A suite file GX would load only in part (or not at all)."""


def gx() -> ModuleType:
    """The `great_expectations` module, imported on first use only."""
    global _gx
    if _gx is None:
        with LOCK:
            if _gx is None:
                import great_expectations

                _skip_data_fingerprint()
                _gx = great_expectations
    return _gx


def _skip_data_fingerprint() -> None:
    """Turn off GX's md5 fingerprint of every pandas batch (hashes each row of the frame).

    The one private GX name this project uses, pinned by tests/tasks/quality/test_validate.py
    (`test_the_data_fingerprint_switch_still_exists`) and listed in the README: there is no
    public switch. The fingerprint is only a batch marker, which nothing here reads, yet on a
    million rows it costs seconds (Arrow-backed strings are factorized to be hashed) and a
    transient copy of the frame. GX hashes frames whose memory_usage() is below HASH_THRESHOLD,
    so a threshold of 0 skips it; if a GX release drops the constant, validation still works,
    only slower, and that test fails.
    """
    from great_expectations.execution_engine import pandas_execution_engine

    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0


def data_docs_index(gx_dir: Path) -> Path:
    """The Data Docs site's index page under `gx_dir` (open it in a browser)."""
    return gx_dir.resolve() / DATA_DOCS_DIR / "index.html"


def run_name(run_date: dt.date) -> str:
    """The run name a run date's validations are filed under (Data Docs list runs by it)."""
    return f"run-date-{run_date.isoformat()}"


def run_files(gx_dir: Path, run_date: dt.date) -> dict[str, str]:
    """The text of the site's index and of every result and page filed under the run date, by
    path: what the run's leak scan reads before anything is committed."""
    root, name, index = gx_dir.resolve(), run_name(run_date), data_docs_index(gx_dir)
    paths = [index] if index.is_file() else []
    paths += [
        p for p in sorted(root.rglob("*")) if p.is_file() and name in p.relative_to(root).parts
    ]
    return {
        f"{FILES_LABEL}{p.relative_to(root)}": p.read_text(encoding="utf-8", errors="replace")
        for p in paths
    }


def remove_files(gx_dir: Path, labels: list[str]) -> int:
    """Delete the files `run_files` named by these labels (a leak found in them); returns how
    many. The index is rebuilt from the results left by the next validation."""
    root, removed = gx_dir.resolve(), 0
    for label in labels:
        path = root / label.removeprefix(FILES_LABEL)
        if label.startswith(FILES_LABEL) and path.is_file():
            path.unlink()
            removed += 1
    return removed


def _store(name: str, backend: dict[str, Any]) -> dict[str, Any]:
    return {"class_name": name, "store_backend": backend}


def project_config(gx_dir: Path | None) -> dict[str, Any]:
    """The context's configuration, as a `great_expectations.yml` would spell it.

    Suites, validation definitions and checkpoints live in memory (the suites' files are in
    expectations/). With `gx_dir`, validation results are stored under it and rendered into a
    Data Docs site there; without it (the warm-up, tests), nothing is written anywhere.
    """
    memory = {"class_name": "InMemoryStoreBackend"}
    results = memory
    sites: dict[str, Any] = {}
    if gx_dir is not None:
        root = gx_dir.resolve()
        results = {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(root / VALIDATIONS_DIR),
        }
        sites[DATA_DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(root / DATA_DOCS_DIR),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    return {
        "config_version": 4.0,
        "analytics_enabled": False,
        # tqdm bars would only clutter flow logs (or a stderr nobody reads).
        "progress_bars": {"globally": False},
        "stores": {
            "expectations_store": _store("ExpectationsStore", memory),
            "validation_results_store": _store("ValidationResultsStore", results),
            "checkpoint_store": _store("CheckpointStore", memory),
            "validation_definition_store": _store("ValidationDefinitionStore", memory),
        },
        "expectations_store_name": "expectations_store",
        "validation_results_store_name": "validation_results_store",
        "checkpoint_store_name": "checkpoint_store",
        "validation_definition_store_name": "validation_definition_store",
        "data_docs_sites": sites,
    }


def checkpoint(
    suite_path: Path, asset_name: str, gx_dir: Path | None
) -> tuple[AbstractDataContext, Checkpoint]:
    """A new context holding the suite of `suite_path`, validated on a whole-dataframe batch of
    the pandas asset `asset_name`, and the checkpoint that runs it (updating the Data Docs site
    when `gx_dir` is given). Call under LOCK; `release` the context after the run."""
    gx_module = gx()
    from great_expectations.checkpoint.actions import UpdateDataDocsAction

    context = gx_module.get_context(mode="ephemeral", project_config=project_config(gx_dir))
    suite = context.suites.add(new_suite(suite_path))
    batch_definition = (
        context.data_sources.add_pandas(DATASOURCE_NAME)
        .add_dataframe_asset(asset_name)
        .add_batch_definition_whole_dataframe(f"{asset_name}_whole")
    )
    definition = context.validation_definitions.add(
        gx_module.ValidationDefinition(name=asset_name, data=batch_definition, suite=suite)
    )
    actions = []
    if gx_dir is not None:
        _prune(context, suite.name)
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=[DATA_DOCS_SITE]))
    found = context.checkpoints.add(
        gx_module.Checkpoint(
            name=asset_name,
            validation_definitions=[definition],
            actions=actions,
            result_format=RESULT_FORMAT,
        )
    )
    return context, found


def _prune(context: AbstractDataContext, suite_name: str) -> None:
    """Remove the suite's stored results but the latest RUNS_KEPT - 1, making room for this
    run's; the site drops the pages of removed results when its index is next built."""
    store = context.validation_results_store
    keys = [
        key
        for key in store.list_keys()
        if key.expectation_suite_identifier.name == suite_name  # type: ignore[attr-defined]
    ]
    keys.sort(key=lambda key: key.run_id.run_time)  # type: ignore[attr-defined]
    for key in keys[: max(len(keys) - (RUNS_KEPT - 1), 0)]:
        store.remove_key(key)  # type: ignore[no-untyped-call]


def release(context: AbstractDataContext) -> None:
    """Drop the validated frame: the datasource's execution engine holds each batch's data and
    caches every metric computed on it (per-row series included) for as long as it lives, and
    GX keeps the last context reachable until the next `get_context`."""
    context.data_sources.delete(DATASOURCE_NAME)


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


def _checked(path: Path | str) -> tuple[ExpectationSuite, dict[str, Any]]:
    """The suite file at `path`, loaded and checked once per process, and its JSON."""
    resolved = Path(path).resolve()
    with LOCK:
        found = _suites.get(resolved)
        if found is None:
            suite_, _ = load_suite_file(resolved)
            data = json.loads(resolved.read_text(encoding="utf-8"))
            found = _suites[resolved] = (suite_, data)
        return found


def suite(path: Path | str) -> ExpectationSuite:
    """The suite from `path`, loaded and checked once per process (to read, not to validate)."""
    return _checked(path)[0]


def new_suite(path: Path | str) -> ExpectationSuite:
    """A new suite object from the checked file at `path`, for a context to own."""
    from great_expectations.core import ExpectationSuite

    # A deep copy: the cached JSON stays as the file says whatever GX does with its arguments.
    data = copy.deepcopy(_checked(path)[1])
    return ExpectationSuite(**{key: data[key] for key in _SUITE_KEYS if key in data})
