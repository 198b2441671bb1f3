"""Crash windows: find what a killed run left between its commit steps, and repair it.

A run commits DuckDB first, then renames its staged lake files into place, then publishes its
artifacts. Those steps cannot be one atomic step, so each committed batch carries its flow run
id in both places (the Parquet metadata and the DuckDB rows). `check` compares them, date by
date, and finds:

- a staged (temp) file whose run is gone: if that run's DuckDB commit went through, the file is
  complete and is renamed into place (rolled forward); otherwise it is removed;
- a `running` run whose process is gone (marked `abandoned`), and a `committed` run whose process
  is gone before it published its artifacts (marked failed at `publish`: rerun the date);
- a date whose lake file and DuckDB rows come from different runs, which only a rerun repairs.

Every run calls it at its start, and `python -m flows.cli --check` on demand. Both also
remove the temp folders of dead processes (`remove_dead_temp_dirs`) and mark their Prefect flow
runs Crashed (flows/leftovers.py, which asks `run_processes` which processes are gone): one rule,
`process_gone`, decides whether a run's process is gone for all of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tasks.common.sqlfiles import read_sql
from tasks.common.tempdirs import owned_temp_dirs
from tasks.storage.lake import file_run_id, fsync_dir, partition_dir, temp_files, temp_owner

# Lake zone -> the DuckDB table holding the same batch.
LAYERS = {"raw": "persons_anonymized", "shareable": "persons_shareable"}


def rerun_command(run_date: dt.date) -> str:
    """The command that rewrites a date from scratch."""
    return f"python -m flows.cli --run-date {run_date.isoformat()}"


@dataclass(frozen=True)
class Finding:
    """One inconsistency: what it was, whether it was repaired, else the command that does."""

    what: str
    run_date: dt.date | None = None
    repaired: bool = False
    command: str | None = None

    def line(self) -> str:
        """One line for a log or the terminal (run ids, paths and dates; never values)."""
        day = f"{self.run_date}: " if self.run_date else ""
        fix = "repaired" if self.repaired else f"repair with: {self.command}"
        return f"{day}{self.what} ({fix})"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def process_gone(run_host: str | None, pid: int | None) -> bool:
    """Whether the process a run recorded (host, pid) is known to be gone.

    A run on another host, or one that recorded no process, cannot be checked from here: it
    counts as alive, so nothing of it (rows, files, flow run) is touched.
    """
    return run_host == socket.gethostname() and pid is not None and not process_alive(pid)


def _live_runs(con: duckdb.DuckDBPyConnection) -> tuple[set[str], list[tuple[str, dt.date, str]]]:
    """(runs that may still be working, dead runs as (id, date, status)) among unfinished ones."""
    live, dead = set(), []
    for run_id, run_date, status, run_host, pid in con.execute(read_sql("open_runs")).fetchall():
        if process_gone(run_host, pid):
            dead.append((run_id, run_date, status))
        else:
            live.add(run_id)
    return live, dead


@dataclass(frozen=True)
class RunProcess:
    """What pipeline_runs holds on a flow run's process, and whether that process is gone."""

    run_date: dt.date | None
    started_at: dt.datetime | None  # naive UTC: when the process recorded the run
    gone: bool


def run_processes(con: duckdb.DuckDBPyConnection, flow_run_ids: list[str]) -> dict[str, RunProcess]:
    """The recorded process of each of these flow runs that has a pipeline_runs row."""
    rows = con.execute(read_sql("run_processes"), {"flow_run_ids": flow_run_ids}).fetchall()
    return {
        run_id: RunProcess(run_date, started_at, process_gone(run_host, pid))
        for run_id, run_date, started_at, run_host, pid in rows
    }


def remove_dead_temp_dirs(root: Path | None = None) -> list[Finding]:
    """Remove our temp folders (tasks/common/tempdirs.py) whose owning process is gone."""
    findings = []
    for path, pid in owned_temp_dirs(root):
        if process_alive(pid):
            continue  # a live run's browser may still be using it
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            what = f"could not remove {path}, left by process {pid}, which is gone"
            findings.append(Finding(what, command=f"rm -r {path}"))
        else:
            what = f"removed {path}, left by process {pid}, which is gone"
            findings.append(Finding(what, repaired=True))
    return findings


def _dead_runs(
    con: duckdb.DuckDBPyConnection, dead: list[tuple[str, dt.date, str]]
) -> list[Finding]:
    findings = []
    for run_id, run_date, status in dead:
        if status == "running":
            con.execute(read_sql("mark_abandoned"), {"flow_run_id": run_id})
            findings.append(Finding(f"run {run_id} died before its commit", run_date, True))
        else:
            con.execute(read_sql("mark_unpublished"), {"flow_run_id": run_id})
            findings.append(
                Finding(
                    f"run {run_id} died after its commit, before publishing its artifacts",
                    run_date,
                    command=rerun_command(run_date),
                )
            )
    return findings


def _date_of(path: Path, lake_dir: Path) -> tuple[str, dt.date] | None:
    """(zone, date) of a file at lake_dir/zone/YYYY/MM/DD/name, else None."""
    parts = path.relative_to(lake_dir).parts
    if len(parts) != 5:
        return None
    try:
        return parts[0], dt.date(int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        return None


def _db_runs(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, dt.date], set[str]]:
    runs: dict[tuple[str, dt.date], set[str]] = defaultdict(set)
    for layer, run_date, run_id, _rows in con.execute(read_sql("date_runs")).fetchall():
        runs[(layer, run_date)].add(run_id)
    return runs


def _run_id(path: Path) -> str | None:
    try:
        return file_run_id(path)
    except Exception:  # a partial file has no footer: it was never complete
        return None


def _temp_files(
    lake_dir: Path, live: set[str], db_runs: dict[tuple[str, dt.date], set[str]]
) -> list[Finding]:
    findings = []
    for temp in temp_files(lake_dir):
        owned = temp_owner(temp)
        where = _date_of(temp, lake_dir)
        if owned is None or where is None or owned[1] in live:
            continue
        target, owner = owned
        zone, run_date = where
        layer = LAYERS.get(zone)
        committed = layer is not None and db_runs.get((layer, run_date)) == {owner}
        if committed and _run_id(temp) == owner and _run_id_or_none(target) != owner:
            os.replace(temp, target)
            fsync_dir(target.parent)
            what = f"rolled the {zone} file of committed run {owner} into place"
        else:
            temp.unlink(missing_ok=True)
            what = f"removed a {zone} file staged by run {owner}, which never committed it"
        findings.append(Finding(what, run_date, True))
    return findings


def _run_id_or_none(path: Path) -> str | None:
    return _run_id(path) if path.exists() else None


def _mismatches(lake_dir: Path, db_runs: dict[tuple[str, dt.date], set[str]]) -> list[Finding]:
    findings = []
    files: dict[tuple[str, dt.date], str | None] = {}
    for zone, layer in LAYERS.items():
        for path in sorted((lake_dir / zone).glob("*/*/*/persons.parquet")):
            where = _date_of(path, lake_dir)
            if where is not None:
                files[(layer, where[1])] = _run_id(path)
    for layer, run_date in sorted(set(files) | set(db_runs)):
        zone = next(z for z, name in LAYERS.items() if name == layer)
        in_db = db_runs.get((layer, run_date), set())
        if (layer, run_date) not in files:
            in_file = f"there is no {zone} file"
        elif (run_id := files[(layer, run_date)]) is None:
            continue  # written before files carried their run id: nothing to compare
        elif in_db == {run_id}:
            continue
        else:
            in_file = f"{zone} file is from run {run_id}"
        held = ", ".join(sorted(in_db)) or "none"
        what = f"{in_file}, {layer} rows from {held}"
        findings.append(Finding(what, run_date, command=rerun_command(run_date)))
    return findings


def check(con: duckdb.DuckDBPyConnection, lake_dir: Path) -> list[Finding]:
    """Find and repair what killed runs left; call under the DuckDB lock, after migrations."""
    lake_dir = Path(lake_dir)
    live, dead = _live_runs(con)
    findings = _dead_runs(con, dead)
    db_runs = _db_runs(con)
    if lake_dir.exists():
        findings += _temp_files(lake_dir, live, db_runs)
        findings += _mismatches(lake_dir, db_runs)
    return findings


def holding(
    con: duckdb.DuckDBPyConnection | None, lake_dir: Path, run_date: dt.date
) -> dict[str, str | None]:
    """Which run's lake file, DuckDB rows and extract the date holds now, read back from disk."""
    zone_file = {
        zone: partition_dir(Path(lake_dir), zone, run_date) / "persons.parquet"
        for zone in (*LAYERS, "quarantine")
    }

    def file_text(zone: str) -> str:
        path = zone_file[zone]
        if not path.exists():
            return "none"
        run_id = _run_id(path)
        return f"run {run_id}" if run_id else "a file without a run id"

    held: dict[str, str | None] = {
        "lake": file_text("raw"),
        "extract": file_text("shareable"),
        "quarantine": str(zone_file["quarantine"]) if zone_file["quarantine"].exists() else None,
        "db": None,
        "db_extract": None,
    }
    if con is not None:
        runs: dict[str, list[str]] = defaultdict(list)
        for layer, run_id, rows in con.execute(
            read_sql("date_run_rows"), {"run_date": run_date}
        ).fetchall():
            runs[layer].append(f"run {run_id} ({rows:,} rows)")
        held["db"] = ", ".join(runs["persons_anonymized"]) or "none"
        held["db_extract"] = ", ".join(runs["persons_shareable"]) or "none"
    return held
