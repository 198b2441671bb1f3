"""Test helpers: what the local API served, independent answers, and leak scans."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from local_api.server import REPLAY_HEADER, LocalApiServer
from tasks.common.vocabulary import kept_words
from tasks.privacy.risk import DEFAULT_K
from tasks.storage.batches import stage_batch
from tasks.storage.database import transaction

_DECIMAL = re.compile(r"-?\d+\.\d+")
PII_FIELDS = ("firstname", "lastname", "email", "phone", "birthday")
ADDRESS_PII = ("street", "streetName", "buildingNumber", "city", "zipcode", "latitude", "longitude")


def committed_batch(
    con: duckdb.DuckDBPyConnection, table: pa.Table, run_date: dt.date, run_id: str
) -> int:
    """A date's batch and report rows as a run commits them: stage_batch in one transaction."""
    with transaction(con):
        return stage_batch(con, table, run_date, run_id)


def served_records(api: LocalApiServer | str) -> list[dict]:
    """The records a local API (or its root URL) answered with 200, in the order first served:
    each persons query it logged, asked again once (a query served twice, as a retried page is,
    counts once). The server says what it served; nothing here re-derives the run's pages."""
    root = api.url if isinstance(api, LocalApiServer) else api.rstrip("/")
    out: list[dict] = []
    with httpx.Client(base_url=root, timeout=60) as client:
        for query in client.get("/__served").json()["queries"]:
            # Without a seed the server drew fresh records: they cannot be asked for again.
            assert "_seed" in query["params"], f"unseeded query served: {query}"
            response = client.get(
                query["path"], params=query["params"], headers={REPLAY_HEADER: "1"}
            )
            response.raise_for_status()
            out += response.json()["data"]
    return out


def raw_values(records: list[dict], run_date: dt.date) -> set[str]:
    """Every identifying value of a served batch, as text, minus values that legitimately stay."""
    values = set()
    for rec in records:
        values.update(str(rec[f]) for f in PII_FIELDS)
        values.add(rec["email"].split("@")[0])
        values.update(str(rec["address"][f]) for f in ADDRESS_PII)
        values.add(rec["website"])
    # Kept for their vocabulary (countries, genders, public providers), and the domains that k
    # persons share; never a value only because the batch carries it.
    kept = set(kept_words())
    domains = Counter(r["email"].rsplit("@", 1)[-1].lower() for r in records)
    kept |= {domain for domain, persons in domains.items() if persons >= DEFAULT_K}
    kept.add(run_date.isoformat())  # someone born on the run date shares it; the date is kept
    # A surname such as "Marshall" is also part of a kept country ("Marshall Islands").
    kept_text = "\n".join(kept)
    return {v for v in values if len(v) >= 4 and v not in kept_text}


def age_at(birthday: str, run_date: dt.date) -> int:
    """Whole years at run_date, written the obvious way (independent of the SQL)."""
    born = dt.date.fromisoformat(birthday)
    return run_date.year - born.year - ((run_date.month, run_date.day) < (born.month, born.day))


def expected_reports(records: list[dict], run_date: dt.date) -> dict[str, list[dict]]:
    """The three answers computed in plain Python from the served records."""
    gmail = [r for r in records if r["email"].rsplit("@", 1)[-1].lower() == "gmail.com"]
    german = [r for r in records if r["address"]["country_code"] == "DE"]
    german_gmail = [r for r in german if r in gmail]
    share = round(100 * len(german_gmail) / len(german), 2) if german else None
    per_country = Counter(r["address"]["country"] for r in gmail)
    levels = sorted(set(per_country.values()), reverse=True)[:3]
    top = sorted(
        (
            {"rank": levels.index(n) + 1, "country": c, "gmail_users": n}
            for c, n in per_country.items()
            if n in levels
        ),
        key=lambda row: (row["rank"], row["country"]),
    )
    over_60 = sum(age_at(r["birthday"], run_date) >= 60 for r in gmail)
    return {
        "germany-gmail-share": [
            {
                "german_users": len(german),
                "german_gmail_users": len(german_gmail),
                "gmail_share_pct": share,
            }
        ],
        "top-gmail-countries": top,
        "gmail-users-over-60": [{"gmail_users_over_60": over_60}],
    }


COUNT_COLUMNS = {
    "germany-gmail-share": ("german_users", "german_gmail_users"),
    "top-gmail-countries": ("gmail_users",),
    "gmail-users-over-60": ("gmail_users_over_60",),
}


def published(expected: dict[str, list[dict]], k: int = 5) -> dict[str, list[dict]]:
    """The answers as published: counts of 1..k-1 people show as `<k`, and so does the share
    computed from such a count; countries below k are not ranked (exact values stay in DuckDB).
    Complementary suppression (`x`) is not modelled: tests/tasks/reporting/test_disclosure.py
    checks it."""
    label = f"<{k}"
    out = {}
    for key, rows in expected.items():
        out[key] = [
            {
                c: label if c in COUNT_COLUMNS[key] and isinstance(v, int) and 0 < v < k else v
                for c, v in row.items()
            }
            for row in rows
        ]
    share = out["germany-gmail-share"][0]
    if label in (share["german_users"], share["german_gmail_users"]):
        share["gmail_share_pct"] = label
    out["top-gmail-countries"] = ranked_among_shown(expected["top-gmail-countries"], k)
    return out


def ranked_among_shown(top: list[dict], k: int) -> list[dict]:
    """Top countries as published: only those with k or more Gmail users, dense-ranked among
    themselves (a hidden count gets no rank and pushes no shown country down)."""
    shown = [row for row in top if row["gmail_users"] >= k]
    levels = sorted({row["gmail_users"] for row in shown}, reverse=True)[:3]
    return sorted(
        (
            {**row, "rank": levels.index(row["gmail_users"]) + 1}
            for row in shown
            if row["gmail_users"] in levels
        ),
        key=lambda row: (row["rank"], row["country"]),
    )


def parquet_cells(root: Path) -> set[str]:
    """Every cell and metadata value of every Parquet file under root, as text."""
    cells: set[str] = set()
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        for column in table.columns:
            cells.update(str(v) for v in column.to_pylist())
        cells.update(str(v) for v in (table.schema.metadata or {}).values())
    return cells


def duckdb_cells(db_path: Path) -> set[str]:
    """Every cell of every table in a DuckDB file, as text."""
    cells: set[str] = set()
    with duckdb.connect(str(db_path), read_only=True) as con:
        tables = [t for (t,) in con.execute("select table_name from duckdb_tables()").fetchall()]
        for table in tables:
            for row in con.execute(f'select * from "{table}"').fetchall():
                cells.update(str(v) for v in row)
    return cells


def file_bytes(root: Path) -> bytes:
    """All bytes of all files under root (for scanning uncompressed stores: SQLite, pickles)."""
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def leaked(secrets: set[str], cells: set[str], blob: bytes = b"") -> list[str]:
    """Secrets found as whole cells, or (if 8+ characters) anywhere in the bytes."""
    hits = secrets & cells
    # Short values (zipcodes) would match compressed or binary bytes by chance; long ones cannot.
    # Nor can a bare decimal such as a coordinate be told apart, in a byte stream, from the
    # durations and figures Prefect stores ("9.109301" s): whole cells above still cover those.
    long = {v.encode(): v for v in secrets if len(v) >= 8 and not _DECIMAL.fullmatch(v)}
    hits |= {long[found] for found in occurring(set(long), blob)}
    return sorted(hits)


def occurring(needles: set[bytes], blob: bytes, width: int = 8) -> set[bytes]:
    """The needles (`width`, 8 or 4, bytes or more each) that occur in blob: `{n for n in needles
    if n in blob}`, but one pass for all of them. Every `width`-byte window of blob is read as an
    integer (`width` strided reads, one per offset) and looked up among the needles' first
    `width` bytes; only the windows that match one are compared whole."""
    assert width in (4, 8) and all(len(n) >= width for n in needles)
    if not needles or len(blob) < width:
        return set()
    by_head: dict[bytes, list[bytes]] = {}
    for needle in needles:
        by_head.setdefault(needle[:width], []).append(needle)
    dtype = f"<u{width}"
    heads = np.frombuffer(b"".join(by_head), dtype=dtype)
    found: set[bytes] = set()
    for offset in range(width):
        count = (len(blob) - offset) // width
        words = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
        for index in np.flatnonzero(np.isin(words, heads)).tolist():
            at = offset + width * index
            found.update(n for n in by_head[blob[at : at + width]] if blob.startswith(n, at))
    return found


@dataclass
class Seen:
    """What a watcher read of one process: its command line and start-up environment."""

    cmdline: str
    environ: bytes


@dataclass
class Watcher:
    """Reads /proc of every descendant of `root` until `root` exits."""

    root: int
    seen: dict[tuple[int, str], Seen] = field(default_factory=dict)
    root_environ: bytes = b""  # the CLI's own, once it has exec'd: it holds the key

    def _children(self) -> dict[int, int]:
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue  # gone between the listing and the read
                # The command name may hold spaces and parentheses: the ppid follows the last ')'.
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        return parents

    def _descendants(self) -> list[int]:
        parents, found, frontier = self._children(), [], [self.root]
        while frontier:
            kids = [pid for pid, ppid in parents.items() if ppid in frontier]
            found += kids
            frontier = kids
        return found

    def poll(self) -> None:
        root_cmdline = _read(self.root, "cmdline")
        if not self.root_environ and root_cmdline and "flows.cli" in root_cmdline:
            self.root_environ = (_read(self.root, "environ") or "").encode()
        for pid in self._descendants():
            cmdline = _read(pid, "cmdline")
            # A child between fork and exec still shows its parent's command line and start-up
            # environment (the CLI's, which holds the key): it is read again once it has exec'd.
            if cmdline is None or cmdline == root_cmdline or (pid, cmdline) in self.seen:
                continue
            environ = _read(pid, "environ")
            if environ is not None:
                self.seen[(pid, cmdline)] = Seen(cmdline, environ.encode())

    def watch(self, proc: subprocess.Popen[str], stop: threading.Event) -> None:
        while proc.poll() is None and not stop.is_set():
            self.poll()
            stop.wait(0.02)  # a fresh look at /proc; a process lives far longer than this


def _read(pid: int, name: str) -> str | None:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def run_watched(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> tuple[subprocess.CompletedProcess[str], Watcher]:
    """Run `cmd` to its end while a Watcher reads /proc of every process it starts."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watcher, stop = Watcher(proc.pid), threading.Event()
    thread = threading.Thread(target=watcher.watch, args=(proc, stop), daemon=True)
    thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        thread.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), watcher


def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)
