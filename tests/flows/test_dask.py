"""The flow on a 2-worker local Dask cluster: the same results as the thread pool, no batch
spilled to disk unless DASK_ALLOW_SPILL says so (and then no raw value in what spills), and no
DASK_ADDRESS that would send batches over the network in clear text.

Spilling is forced the way a reviewer forces it, through Dask's own environment variables
(tiny memory fractions, no spill compression, a known scratch directory). A worker deletes a
spill file when its key is released and its whole directory when it closes, so after a run the
scratch space is empty either way: a worker preload (`dask_setup` below, sent as script text)
keeps a copy of every byte a worker writes to spill storage, and records the memory settings
each worker process actually runs with.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.runners import (
    DaskSettingError,
    RefusedTaskRunner,
    check_dask_address,
    flow_setup,
    make_task_runner,
)
from flows.user_metrics import user_metrics_pipeline
from tasks.common.errors import failure_text
from tasks.common.secrets import hash_key
from tasks.common.settings import get_settings
from tasks.ingest.fetch import close_clients
from tasks.storage.lake import raw_path
from tests.helpers import occurring, raw_values, served_records

RUN_DATE = dt.date(2026, 9, 30)
PARAMS = {"records": 3000, "page_size": 500, "run_date": RUN_DATE, "seed": 77}
PROBE_ENV = "TEST_DASK_PROBE_DIR"

# A cluster start plus a 3000-record run takes 30-90 s on a busy 2-core machine.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(autouse=True)
def _fresh_clients():
    yield
    close_clients()


def dask_setup(worker: object) -> None:
    """Worker preload, run in each Dask worker process: write what the worker runs with to
    PROBE_ENV/worker-<pid>.json, and copy every value it spills into PROBE_ENV/spilled/.

    Sent as source text and run on its own there, so it imports what it uses and its
    annotations name builtins only.
    """
    import itertools
    import json
    import os
    from pathlib import Path

    import dask
    import zict

    probe = Path(os.environ["TEST_DASK_PROBE_DIR"])
    memory = "distributed.worker.memory"
    seen = {
        "target": dask.config.get(f"{memory}.target"),
        "spill": dask.config.get(f"{memory}.spill"),
        "spill_compression": dask.config.get(f"{memory}.spill-compression"),
        "env_target": os.environ.get("DASK_DISTRIBUTED__WORKER__MEMORY__TARGET"),
        "local_directory": worker.local_directory,
        "store": type(worker.data).__name__,
    }
    (probe / f"worker-{os.getpid()}.json").write_text(json.dumps(seen))
    kept = probe / "spilled"
    kept.mkdir(exist_ok=True)
    count = itertools.count()
    write_spill_file = zict.File.__setitem__

    # zict.File is the store behind a worker's SpillBuffer: every spilled byte passes here.
    def keep_a_copy(self: object, key: object, value: object) -> None:
        with open(kept / f"{os.getpid()}-{next(count)}", "wb") as copy:
            if isinstance(value, list | tuple):
                copy.writelines(value)
            else:
                copy.write(value)
        write_spill_file(self, key, value)

    zict.File.__setitem__ = keep_a_copy


@pytest.fixture
def forced_spilling(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Dask env that makes every worker spill each result at once, uncompressed, into a known
    scratch directory, plus the `dask_setup` probe; yields (scratch dir, probe dir).

    Dask reads DASK_* variables when it is imported (long before this test), so the config is
    refreshed from the environment here and again afterwards. A Nanny hands the refreshed
    config to its worker process, which applies it over its own reading of the environment.
    """
    import dask

    scratch, probe = tmp_path / "dask-scratch", tmp_path / "probe"
    scratch.mkdir()
    probe.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DASK_DISTRIBUTED__WORKER__MEMORY__TARGET", "1e-6")
        env.setenv("DASK_DISTRIBUTED__WORKER__MEMORY__SPILL", "1e-6")
        env.setenv("DASK_DISTRIBUTED__WORKER__MEMORY__SPILL_COMPRESSION", "False")
        env.setenv("DASK_TEMPORARY_DIRECTORY", str(scratch))
        # Script text (it has spaces), not a module name: workers need not import this file.
        env.setenv("DASK_DISTRIBUTED__WORKER__PRELOAD", repr([inspect.getsource(dask_setup)]))
        env.setenv(PROBE_ENV, str(probe))
        dask.config.refresh()
        try:
            yield scratch, probe
        finally:
            env.undo()
            dask.config.refresh()


def _workers_seen(probe: Path, scratch: Path) -> list[dict[str, Any]]:
    """What each worker process recorded; checks they were forced and used the scratch dir."""
    seen = [json.loads(p.read_text()) for p in sorted(probe.glob("worker-*.json"))]
    assert len(seen) == 2, seen
    for worker in seen:
        assert worker["env_target"] == "1e-6"
        assert worker["spill_compression"] is False
        assert Path(worker["local_directory"]).is_relative_to(scratch)
    return seen


def _point_at(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Give a run its own lake and database; env, so Dask worker processes see it too."""
    monkeypatch.setenv("DATA_LAKE_DIR", str(root / "lake"))
    monkeypatch.setenv("DUCKDB_PATH", str(root / "db" / "faker.duckdb"))
    get_settings.cache_clear()
    hash_key.cache_clear()
    return root


def _stored(root: Path) -> tuple[list[tuple], list[dict]]:
    """persons_anonymized rows (sorted, without the run id) and the lake file's rows (sorted)."""
    with duckdb.connect(str(root / "db" / "faker.duckdb"), read_only=True) as con:
        rows = con.execute(
            "select person_key, run_date, gender, age_group, email_domain, country, country_code "
            "from persons_anonymized order by all"
        ).fetchall()
    lake = pq.read_table(raw_path(root / "lake", RUN_DATE))
    return rows, sorted(lake.to_pylist(), key=lambda row: row["person_key"])


def test_dask_runner_matches_thread_pool_and_spills_nothing(
    api, pipeline_env, prefect_storage, forced_spilling, monkeypatch: pytest.MonkeyPatch
):
    scratch, probe = forced_spilling
    threads_root = _point_at(monkeypatch, pipeline_env / "threads")
    threaded = user_metrics_pipeline(api_url=api.base_url, **PARAMS)

    dask_root = _point_at(monkeypatch, pipeline_env / "dask")
    on_dask = user_metrics_pipeline.with_options(task_runner=make_task_runner("dask", None, 2))
    distributed = on_dask(api_url=api.base_url, **PARAMS)

    assert distributed["records_loaded"] == threaded["records_loaded"] == 3000
    assert distributed["answers"] == threaded["answers"]
    dask_rows, dask_lake = _stored(dask_root)
    thread_rows, thread_lake = _stored(threads_root)
    assert len(dask_rows) == 3000
    assert dask_rows == thread_rows
    assert dask_lake == thread_lake
    # Forced to spill, yet spilling is off: nothing was written, results live in a plain dict.
    seen = _workers_seen(probe, scratch)
    assert not list((probe / "spilled").iterdir()), "a worker spilled"
    for worker in seen:
        assert (worker["target"], worker["spill"], worker["store"]) == (False, False, "dict")
    left = [p for p in scratch.rglob("*") if p.is_file()]
    assert all(p.suffix in (".lock", ".dirlock") and p.stat().st_size == 0 for p in left), left


def test_allowed_spilling_spills_no_raw_value(api, pipeline_env, prefect_storage, forced_spilling):
    scratch, probe = forced_spilling
    runner = make_task_runner("dask", None, 2, allow_spill=True)
    summary = user_metrics_pipeline.with_options(task_runner=runner)(api_url=api.base_url, **PARAMS)
    assert summary["records_loaded"] == 3000
    for worker in _workers_seen(probe, scratch):
        assert (worker["target"], worker["spill"], worker["store"]) == (1e-6, 1e-6, "SpillBuffer")
    spilled = [p.read_bytes() for p in (probe / "spilled").iterdir()]
    assert spilled and all(spilled), "forcing did not make the workers spill"
    blob = b"\x00".join(spilled)

    # The spill holds the masked batches, readable: every person_key of the lake is in it.
    lake = pq.read_table(raw_path(pipeline_env / "lake", RUN_DATE))
    keys = {key.encode() for key in lake["person_key"].to_pylist()}
    assert occurring(keys, blob) == keys

    secrets = raw_values(served_records(api), RUN_DATE)
    # Short all-numeric values (building numbers, 5-digit zipcodes, rounded coordinates) occur
    # by chance in any binary and in the hex of every person_key; a spilled raw page would show
    # in its e-mails, phones, names and streets all the same.
    needles = {v.encode() for v in secrets if len(v) >= 8 or not _NUMERIC.fullmatch(v)}
    assert len(needles) > 20_000
    email = next(v for v in sorted(needles) if b"@" in v)
    name = next(v for v in sorted(needles) if len(v) < 8 and v.isalpha())
    planted = spilled[0] + email + b"\x00" + name
    assert {email, name} <= _found(needles, planted), "the scan misses a planted value"
    assert _found(needles, blob) == set()


_NUMERIC = re.compile(r"[-+0-9.]+")


def _found(needles: set[bytes], blob: bytes) -> set[bytes]:
    """The needles that occur in blob, in one pass per length class (4-7 bytes, 8+ bytes)."""
    long = {n for n in needles if len(n) >= 8}
    return occurring(long, blob) | occurring(needles - long, blob, width=4)


def test_remote_address_must_be_tls(monkeypatch: pytest.MonkeyPatch):
    refusals = {
        "tcp://10.0.0.5:8786": "uses tcp://",
        "TCP://scheduler:8786": "uses tcp://",
        "ws://scheduler:8786": "uses ws://",
        "scheduler:8786": "has no scheme",
    }
    for address, why in refusals.items():
        with pytest.raises(DaskSettingError, match=why) as refused:
            make_task_runner("dask", address, 2)
        line = str(refused.value)
        assert "\n" not in line and "unencrypted" in line and "DASK_TRUSTED_NETWORK=true" in line

    tls = make_task_runner("dask", "tls://scheduler:8786", 2)
    assert tls.address == "tls://scheduler:8786"
    trusted = make_task_runner("dask", "tcp://10.0.0.5:8786", 2, trusted_network=True)
    assert trusted.address == "tcp://10.0.0.5:8786"
    assert check_dask_address("tls://[::1]:8786") == "tls://[::1]:8786"

    # From the settings, as the flow module takes them when it loads: the refusal is deferred
    # to the run (see test_refused_address_fails_the_run_in_one_line); trust lifts it.
    monkeypatch.setenv("TASK_RUNNER", "dask")
    monkeypatch.setenv("DASK_ADDRESS", "tcp://10.0.0.5:8786")
    for trust in ("false", "0"):
        monkeypatch.setenv("DASK_TRUSTED_NETWORK", trust)
        refused = flow_setup().task_runner
        assert isinstance(refused, RefusedTaskRunner)
        assert "DASK_ADDRESS tcp://10.0.0.5:8786 uses tcp://" in str(refused.error)
    monkeypatch.setenv("DASK_TRUSTED_NETWORK", "true")
    assert flow_setup().task_runner.address == "tcp://10.0.0.5:8786"
    monkeypatch.setenv("DASK_TRUSTED_NETWORK", "ture")
    assert "DASK_TRUSTED_NETWORK (got 'ture')" in str(flow_setup().task_runner.error)


def test_local_cluster_spills_only_when_allowed(monkeypatch: pytest.MonkeyPatch):
    default = make_task_runner("dask", None, 2).cluster_kwargs
    assert default["config"]["distributed.worker.memory.spill"] is False
    assert default["data"] is dict
    allowed = make_task_runner("dask", None, 2, allow_spill=True).cluster_kwargs
    assert "config" not in allowed and "data" not in allowed
    monkeypatch.setenv("TASK_RUNNER", "dask")
    assert flow_setup().task_runner.cluster_kwargs["data"] is dict
    monkeypatch.setenv("DASK_ALLOW_SPILL", "true")
    assert "data" not in flow_setup().task_runner.cluster_kwargs


def test_refused_address_fails_the_run_in_one_line(
    api, pipeline_env, prefect_storage, monkeypatch: pytest.MonkeyPatch, capsys
):
    from flows.cli import main

    monkeypatch.setenv("TASK_RUNNER", "dask")
    monkeypatch.setenv("DASK_ADDRESS", "tcp://127.0.0.1:1")
    refusal = "DASK_ADDRESS tcp://127.0.0.1:1 uses tcp://"

    # The CLI refuses it as bad input, before Prefect starts.
    code = main(["--api-url", api.base_url, "--records", "10", "--run-date", str(RUN_DATE)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.splitlines() == [err] and err.startswith(f"error: {refusal}"), err

    # A deployment run (a worker's process loaded the flow module with these settings): the
    # run fails at its first task, in one line, before any page is asked for.
    refused = flow_setup().task_runner
    assert isinstance(refused, RefusedTaskRunner)
    on_refused = user_metrics_pipeline.with_options(task_runner=refused)
    state = on_refused(api_url=api.base_url, records=10, run_date=RUN_DATE, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DaskSettingError), repr(error)
    line = failure_text(error)
    assert line.startswith(f"DaskSettingError: {refusal}") and "\n" not in line, line
    assert not served_records(api)  # refused before any page was asked for
    assert not list((pipeline_env / "lake").rglob("*.parquet"))


def test_unknown_runner_is_refused(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match="not one of threads, dask"):
        make_task_runner("ray", None, 2)
    monkeypatch.setenv("TASK_RUNNER", "ray")
    assert "TASK_RUNNER (got 'ray')" in str(flow_setup().task_runner.error)
