"""`make bench`: the flow against a warm local API at several sizes; per-step seconds, records/s,
peak RSS of the flow process, task runs and core count, written to bench/results.{json,md}.

Each size runs in a child process of its own (`--child`), so its peak RSS is that run's alone, and
the child times Prefect's and GX's one-time start-up before the flow run, which is timed apart.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_SIZES = (1_000, 30_000, 100_000, 1_000_000)
RUN_DATE = dt.date(2026, 11, 26)
SEED = 20261126
BENCH_KEY = "bench-only-hmac-key-0123456789"  # synthetic data only; never a real key
# Step rows of the table, in pipeline order; any other seconds_* key the flow reports is
# appended after these.
STAGES = (
    "fetch",
    "mask",
    "lake",
    "generalize",
    "validate",
    "load",
    "privacy",
    "reports",
    "charts",
    "verify",
    "leak_scan",
    "commit",
    "publish",
)
# Fetch throughput check from the issue: 30 pages at concurrency 8 with 200 ms per request.
THROUGHPUT_PAGES, THROUGHPUT_CONCURRENCY, THROUGHPUT_LATENCY_MS = 30, 8, 200
RATE_CHECK_PAGES, RATE_CHECK_RPM = 6, 300


# --- local API --------------------------------------------------------------------------------


def start_api(*extra: str, cache_size: int = 32) -> tuple[subprocess.Popen[str], str]:
    """Start `python -m local_api` on a free port; returns the process and its base URL."""
    cmd = [sys.executable, "-m", "local_api", "--port", "0", "--quiet"]
    proc = subprocess.Popen(
        [*cmd, "--cache-size", str(cache_size), *extra],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = next((word for word in line.split() if word.startswith("http")), None)
    if url is None:
        proc.kill()
        raise RuntimeError(f"local API did not start (printed {line!r})")
    return proc, url.rstrip("/")


def stop(proc: subprocess.Popen[str]) -> None:
    """Terminate a child we started, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fetch_config(api_url: str, concurrency: int = 8, rpm: int = 0) -> Any:
    from tasks.ingest.fetch import FetchConfig

    # The same request parameters the flow sends, so warmed responses are the ones it asks for.
    return FetchConfig(
        api_url=api_url,
        birthday_end=RUN_DATE.isoformat(),
        concurrency=concurrency,
        requests_per_minute=rpm,
    )


def warm_api(api_url: str, records: int, page_size: int) -> float:
    """Request every page of a run once, so the server answers the run from its cache."""
    from tasks.ingest.fetch import close_clients, fetch_page
    from tasks.ingest.plan import plan_pages, run_seed_for, seed_key

    # The run's own page seeds: keyed with the key the benchmark's runs use.
    key = seed_key(os.environ.get("PII_HASH_KEY", BENCH_KEY).encode())
    pages = plan_pages(records, page_size, run_seed_for(RUN_DATE, SEED), key)
    config = _fetch_config(api_url)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(config.concurrency) as pool:
        for _ in pool.map(lambda page: fetch_page(config, page), pages):
            pass
    close_clients()
    return time.perf_counter() - started


def _server_stats(api_url: str) -> dict[str, Any]:
    import httpx

    root = api_url.split("/api/")[0]
    return httpx.get(f"{root}/__stats", timeout=5).json()


def fetch_throughput() -> dict[str, Any]:
    """30 pages, 200 ms each, concurrency 8; and the spacing a requests-per-minute budget gives."""
    from tasks.ingest.fetch import close_clients, fetch_page
    from tasks.ingest.plan import plan_pages, seed_key

    proc, url = start_api("--latency-ms", str(THROUGHPUT_LATENCY_MS))
    try:
        # Small pages: latency dominates.
        pages = plan_pages(THROUGHPUT_PAGES * 10, 10, SEED, seed_key(BENCH_KEY.encode()))
        config = _fetch_config(url, concurrency=THROUGHPUT_CONCURRENCY)
        fetch_page(config, pages[0])  # connection pool and server pools warm, as in a run
        import httpx

        httpx.get(f"{url.split('/api/')[0]}/health")
        started = time.perf_counter()
        # More threads than the gate allows, like the flow's 16 task threads: the gate bounds it.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda page: fetch_page(config, page), pages))
        seconds = time.perf_counter() - started
        max_in_flight = _server_stats(url)["max_in_flight"]
        close_clients()

        rate_config = _fetch_config(url, concurrency=THROUGHPUT_CONCURRENCY, rpm=RATE_CHECK_RPM)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda page: fetch_page(rate_config, page), pages[:RATE_CHECK_PAGES]))
        rate_seconds = time.perf_counter() - started
        close_clients()
    finally:
        stop(proc)
    ideal = THROUGHPUT_PAGES * THROUGHPUT_LATENCY_MS / 1000 / THROUGHPUT_CONCURRENCY
    # n requests spaced 60/rpm apart take at least (n - 1) intervals, plus one request's latency.
    rate_floor = (RATE_CHECK_PAGES - 1) * 60 / RATE_CHECK_RPM
    return {
        "pages": THROUGHPUT_PAGES,
        "concurrency": THROUGHPUT_CONCURRENCY,
        "latency_ms": THROUGHPUT_LATENCY_MS,
        "seconds": round(seconds, 3),
        "ideal_seconds": ideal,
        "limit_seconds": 1.5 * ideal,
        "within_limit": seconds <= 1.5 * ideal,
        "max_in_flight_at_server": max_in_flight,
        "rate_limit_rpm": RATE_CHECK_RPM,
        "rate_limit_pages": RATE_CHECK_PAGES,
        "rate_limit_seconds": round(rate_seconds, 3),
        "rate_limit_min_seconds": rate_floor,
        "rate_limit_respected": rate_seconds >= rate_floor,
    }


# --- one size, in a child process -------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """Run the flow once in this process and write what it measured to args.result_file."""
    t0 = time.perf_counter()
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.user_metrics import user_metrics_pipeline
    from tasks.quality import validator
    from tasks.quality.gx_validation import warm_up_batches

    seconds_import = time.perf_counter() - t0

    # GX's one-time start-up, in the validator process the flow validates in: its start, GX's
    # import, context, suites and assets, and the answer to a first (small) validation.
    t0 = time.perf_counter()
    masked, _ = warm_up_batches()
    validating = validator.start()  # the flow's prewarm finds it running and keeps it
    if validating.validate("masked", masked, masked.num_rows) is None:
        raise RuntimeError("the validator process gave no answer")
    seconds_gx = time.perf_counter() - t0

    @task
    def _warm_task() -> int:
        return 1

    @flow
    def _warm_flow() -> int:
        return _warm_task()

    # The first flow run starts Prefect's ephemeral API server and its engine: one-time cost.
    t0 = time.perf_counter()
    _warm_flow()
    seconds_prefect = time.perf_counter() - t0

    samples: list[tuple[float, float, str]] = []
    sampling = threading.Event()
    main_thread = threading.get_ident()

    def current_step() -> str:
        # The step the flow is in: `run.step` of the running flow's frame (the flow body
        # runs in this, the main, thread). Benchmark-only introspection.
        frame = sys._current_frames().get(main_thread)
        while frame is not None:
            if frame.f_code.co_name == "user_metrics_pipeline":
                return str(getattr(frame.f_locals.get("run"), "step", "?"))
            frame = frame.f_back
        return "start/end"

    def sample_rss() -> None:
        # RSS over the run, to see which step sets the peak (ru_maxrss only gives its height).
        while not sampling.wait(0.25):
            kib = _status_kib(os.getpid(), "VmRSS")
            samples.append((time.perf_counter() - started, kib / 1024, current_step()))

    started = time.perf_counter()
    sampler = threading.Thread(target=sample_rss, name="rss-sampler", daemon=True)
    sampler.start()
    summary = user_metrics_pipeline(
        api_url=args.api_url,
        records=args.records,
        page_size=args.page_size,
        run_date=RUN_DATE,
        seed=SEED,
    )
    wall = time.perf_counter() - started
    sampling.set()
    sampler.join()

    with get_client(sync_client=True) as client:
        ids = FlowRunFilterId(any_=[summary["flow_run_id"]])
        task_runs, page = 0, 200  # the API serves at most 200 per request
        while batch := client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=ids), limit=page, offset=task_runs
        ):
            task_runs += len(batch)
            if len(batch) < page:
                break

    # ru_maxrss is KiB on Linux: this process's peak, not the Prefect server's or Chromium's.
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The validator process holds the pandas frame GX validates: its own peak, reported beside.
    validator_pid = validating.pid  # None once stopped: no figure then, rather than a new one's
    validator_kib = _status_kib(validator_pid, "VmHWM") if validator_pid else 0
    result = {
        "records": args.records,
        "records_loaded": summary["records_loaded"],
        "pages": summary["pages"],
        "seconds_flow_wall": wall,
        "startup": {
            "seconds_imports": seconds_import,
            "seconds_gx": seconds_gx,
            "seconds_prefect_first_run": seconds_prefect,
        },
        "steps": {
            key.removeprefix("seconds_"): value
            for key, value in summary.items()
            if key.startswith("seconds_") and isinstance(value, int | float)
        },
        "task_runs": task_runs,
        "peak_rss_mib": peak_kib / 1024,
        "validator_peak_rss_mib": validator_kib / 1024,
        # (seconds since the flow started, RSS MiB, step), every 0.25 s.
        "rss_timeline": [(round(t, 2), round(mib), step) for t, mib, step in samples],
        "peak_rss_mib_by_step": _peaks(samples),
    }
    Path(args.result_file).write_text(json.dumps(result, indent=2))
    return 0


def _status_kib(pid: int, field: str) -> int:
    """A memory figure (KiB) of /proc/<pid>/status, e.g. VmRSS or VmHWM (the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _peaks(samples: list[tuple[float, float, str]]) -> dict[str, int]:
    """Highest sampled RSS (MiB) per step, in the order the steps ran."""
    peaks: dict[str, int] = {}
    for _, mib, step in samples:
        peaks[step] = max(peaks.get(step, 0), round(mib))
    return peaks


def run_size(api_url: str, records: int, page_size: int, workdir: Path) -> dict[str, Any]:
    """Run one size in a fresh child process (own lake, DuckDB and Prefect home)."""
    result_file = workdir / f"result-{records}.json"
    env = {
        **os.environ,
        "DATA_LAKE_DIR": str(workdir / f"lake-{records}"),
        "DUCKDB_PATH": str(workdir / f"db-{records}" / "faker.duckdb"),
        # One Prefect home for all sizes: its SQLite database is migrated once, by the first run.
        "PREFECT_HOME": str(workdir / "prefect"),
        # The ephemeral server's default 20 s start-up budget is tight on a busy 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "PII_HASH_KEY": os.environ.get("PII_HASH_KEY", BENCH_KEY),
        "PII_HASH_KEY_BLOCK": "",
        # As `make run` and the deployment set it (tasks/common/allocator.py).
        "ARROW_DEFAULT_MEMORY_POOL": os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "jemalloc"),
    }
    cmd = [sys.executable, "-m", "bench.run", "--child", "--api-url", api_url]
    cmd += ["--records", str(records), "--page-size", str(page_size)]
    cmd += ["--result-file", str(result_file)]
    log_file = workdir / f"child-{records}.log"
    with log_file.open("w") as log:
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        # A failed size is reported, not fatal: the other sizes' figures still stand.
        lines = [line for line in log_file.read_text().splitlines() if line.strip()]
        return {"records": records, "failed": True, "error": lines[-1][:500] if lines else "?"}
    return json.loads(result_file.read_text())


# --- derived figures and output ---------------------------------------------------------------


def derive(run: dict[str, Any]) -> dict[str, Any]:
    """Records/s end to end and for mask + generalize, from a child's raw figures."""
    if run.get("failed"):
        return run
    steps, records = run["steps"], run["records"]
    total = steps.get("total", run["seconds_flow_wall"])
    masking = steps.get("mask", 0.0) + steps.get("generalize", 0.0)
    return {
        **run,
        "records_per_second": records / total if total else None,
        "microseconds_per_record": 1e6 * total / records,
        # seconds_mask is summed over mask task runs (which overlap), so this is conservative.
        "mask_generalize_records_per_second": records / masking if masking else None,
        "startup_seconds": sum(run["startup"].values()),
    }


def marginal(runs: list[dict[str, Any]]) -> dict[str, float]:
    """µs per extra record between consecutive sizes (flow seconds, start-up excluded), e.g.
    `1,000->100,000`: what each record costs once the fixed costs are paid."""
    done = sorted(
        (run["records"], run["steps"]["total"]) for run in runs if "total" in run["steps"]
    )
    return {
        f"{a:,}->{b:,}": round(1e6 * (tb - ta) / (b - a), 1)
        for (a, ta), (b, tb) in itertools.pairwise(done)
    }


def step_names(runs: list[dict[str, Any]]) -> list[str]:
    """Known steps in pipeline order, then whatever else the flow reported, then total."""
    seen = {name for run in runs for name in run["steps"]}
    extra = sorted(seen - set(STAGES) - {"total"})
    return [name for name in (*STAGES, *extra) if name in seen] + (
        ["total"] if "total" in seen else []
    )


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table (one column per size) plus the fetch checks."""
    failed = [run for run in results["runs"] if run.get("failed")]
    runs = [run for run in results["runs"] if not run.get("failed")]
    header = "| | " + " | ".join(f"{run['records']:,} records" for run in runs) + " |"
    lines = [
        f"Benchmark on {results['machine']['cores']} cores, {results['machine']['python']}, "
        f"{results['started_at']}. Seconds per step are of the flow run (start-up excluded); "
        "fetch and mask are summed over their overlapping task runs.",
        "",
        header,
        "|---" * (len(runs) + 1) + "|",
    ]

    def row(label: str, values: list[Any], digits: int = 2) -> None:
        lines.append(f"| {label} | " + " | ".join(_fmt(v, digits) for v in values) + " |")

    for name in step_names(runs):
        row(f"seconds {name}", [run["steps"].get(name) for run in runs])
    row("flow wall seconds", [run["seconds_flow_wall"] for run in runs])
    row("start-up: imports s", [run["startup"]["seconds_imports"] for run in runs])
    row("start-up: GX s", [run["startup"]["seconds_gx"] for run in runs])
    row(
        "start-up: Prefect first run s",
        [run["startup"]["seconds_prefect_first_run"] for run in runs],
    )
    row("records/s end to end", [run["records_per_second"] for run in runs], 0)
    row("µs per record", [run["microseconds_per_record"] for run in runs], 1)
    row(
        "mask + generalize records/s (in the run, beside fetching)",
        [run["mask_generalize_records_per_second"] for run in runs],
        0,
    )
    row("peak RSS MiB (flow process)", [run["peak_rss_mib"] for run in runs], 0)
    row("peak RSS MiB (validator process)", [run.get("validator_peak_rss_mib") for run in runs], 0)
    row("task runs", [run["task_runs"] for run in runs])
    row("pages", [run["pages"] for run in runs])
    row("cores", [results["machine"]["cores"] for _ in runs])
    for run in runs:
        if peaks := run.get("peak_rss_mib_by_step"):
            text = ", ".join(f"{step} {mib:,}" for step, mib in peaks.items())
            lines += ["", f"Peak RSS by step, {run['records']:,} records (MiB): {text}."]
    for run in failed:
        lines += ["", f"The {run['records']:,}-record run FAILED: {run['error']}"]
    if steps := marginal(runs):
        text = ", ".join(f"{step}: {us:,} µs" for step, us in steps.items())
        lines += ["", f"Marginal cost per record (flow seconds, start-up excluded): {text}."]
    if wall := results.get("wall"):
        lines += [
            "",
            f"Wall time as users feel it (process start to exit): `make run` (30,000 records) "
            f"first {wall['make_run_first_s']} s (starts the local Prefect server), repeat "
            f"{wall['make_run_repeat_s']} s; a 1,000-record CLI run, repeat "
            f"{wall['cli_1k_repeat_s']} s.",
        ]
    if deployment := results.get("deployment"):
        from bench.wall import deployment_markdown

        lines += ["", deployment_markdown(deployment)]
    if parsed := results.get("bytes_to_rows"):
        steps = ("columns", "mask", "generalize")
        split = ", ".join(f"{step} {parsed[f'ms_{step}']} ms" for step in steps)
        lines += [
            "",
            f"Response bytes to masked + generalized rows, one process, {parsed['records']:,} "
            f"records in 30 pages: {parsed['records_per_s']:,} records/s ({split}); the general "
            f"path's columns (orjson + to_source_table), for a page off the contract: "
            f"{parsed['ms_general_path_columns']} ms.",
        ]
    if transform := results.get("transform"):
        lines += [
            "",
            f"Mask + generalize alone on {transform['records']:,} records (one process, nothing "
            f"else running): {transform['mask_generalize_records_per_s']:,} records/s in bulk, "
            f"{transform['mask_chunked_generalize_records_per_s']:,} records/s masked in "
            f"{transform['chunk_rows']:,}-row ranges as the flow does (target 1,000,000).",
        ]
    fetch = results.get("fetch_throughput")
    if fetch:
        lines += [
            "",
            f"Fetch throughput: {fetch['pages']} pages, {fetch['latency_ms']} ms added latency, "
            f"concurrency {fetch['concurrency']}: {fetch['seconds']:.2f} s (ideal "
            f"{fetch['ideal_seconds']:.2f} s, limit {fetch['limit_seconds']:.3f} s: "
            f"{'met' if fetch['within_limit'] else 'NOT met'}); at most "
            f"{fetch['max_in_flight_at_server']} requests in flight at the server.",
            f"Rate limit: {fetch['rate_limit_pages']} pages at {fetch['rate_limit_rpm']} "
            f"requests/min took {fetch['rate_limit_seconds']:.2f} s (>= "
            f"{fetch['rate_limit_min_seconds']:.2f} s: "
            f"{'respected' if fetch['rate_limit_respected'] else 'NOT respected'}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in DEFAULT_SIZES),
        help="comma list of record counts (default: 30000,1000000)",
    )
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where results go")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the 200 ms check")
    parser.add_argument(
        "--skip-wall",
        action="store_true",
        help="skip the user wall times (`python -m bench.wall` times the deployment runs alone)",
    )
    # Internal: one size in this process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    results: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": [],
    }
    pages_max = max(-(-size // args.page_size) for size in sizes)
    # Cache every page of the largest run: the benchmark measures the pipeline, not Faker.
    proc, url = start_api(cache_size=pages_max + 1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            for size in sizes:
                warm = warm_api(url, size, args.page_size)
                print(f"{size:,} records: API warmed in {warm:.1f} s; running the flow", flush=True)
                run = derive(run_size(url, size, args.page_size, Path(tmp)))
                run["seconds_api_warm_up"] = warm
                results["runs"].append(run)
        if not args.skip_wall:
            from bench import wall

            print("wall times: make run first and repeat, a 1,000-record CLI run", flush=True)
            results["wall"] = wall.measure(url)
    finally:
        stop(proc)
    if not args.skip_wall:
        # Its own local service with its own local API: what `make serve` users run.
        print("wall times: 30,000-record deployment runs on a warm worker", flush=True)
        results["deployment"] = wall.measure_deployment()
    if not args.skip_throughput:
        results["fetch_throughput"] = fetch_throughput()
    # The step on its own, without fetch threads competing for the cores (bench/transform.py).
    from bench import transform

    results["transform"] = transform.measure(max(sizes))
    results["bytes_to_rows"] = transform.bytes_to_rows()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out_dir / "results.md").write_text(table)
    print(table)
    return 1 if any(run.get("failed") for run in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
