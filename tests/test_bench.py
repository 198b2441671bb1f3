"""The benchmark's output structure (no timing assertions: timings depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench
from bench import wall


def _run(records: int, steps: dict[str, float]) -> dict:
    return bench.derive(
        {
            "records": records,
            "records_loaded": records,
            "pages": records // 1000,
            "seconds_flow_wall": 2.0,
            "startup": {
                "seconds_imports": 1.0,
                "seconds_gx": 2.0,
                "seconds_prefect_first_run": 3.0,
            },
            "steps": steps,
            "task_runs": 12,
            "peak_rss_mib": 400.0,
        }
    )


def test_table_lists_every_reported_step_in_pipeline_order():
    steps = {"total": 2.0, "validate": 0.3, "fetch": 0.5, "leak_scan": 0.1, "new_step": 0.2}
    runs = [_run(2000, steps), _run(4000, {**steps, "mask": 0.25})]
    assert bench.step_names(runs) == [
        "fetch",
        "mask",
        "validate",
        "leak_scan",
        "new_step",
        "total",
    ]
    table = bench.markdown(
        {"machine": {"cores": 2, "python": "3.11"}, "started_at": "t", "runs": runs}
    )
    assert "| | 2,000 records | 4,000 records |" in table
    assert "| seconds leak_scan | 0.10 | 0.10 |" in table
    assert "| seconds mask | - | 0.25 |" in table
    assert "| task runs | 12 | 12 |" in table
    assert runs[0]["records_per_second"] == pytest.approx(1000.0)
    assert runs[0]["startup_seconds"] == pytest.approx(6.0)


@pytest.mark.timeout(400)
def test_smoke_run_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv = ["--sizes", "2000", "--skip-throughput", "--skip-wall", "--out-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["cores"] >= 1
    (run,) = results["runs"]
    assert run["records"] == run["records_loaded"] == 2000
    assert {"fetch", "mask", "lake", "generalize", "validate", "load", "reports", "total"} <= set(
        run["steps"]
    )
    assert set(run["startup"]) == {"seconds_imports", "seconds_gx", "seconds_prefect_first_run"}
    # 2 pages: 1-2 fetch-and-mask task runs, plus validate x2, generalize, publish x2 and load.
    assert 5 <= run["task_runs"] <= 12
    assert run["peak_rss_mib"] > 0
    assert run["records_per_second"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| | 2,000 records |" in table
    assert "peak RSS MiB (flow process)" in table
    # The sampler (every 0.25 s) names the flow's steps in the order they ran.
    order = [
        "start",
        "fetch",
        "schema-drift",
        "validate",  # first the raw suite; the analytical one follows generalize
        "generalize",
        "load",
        "privacy",
        "reports",
        "verify",
        "commit",
        "publish",
        "finish",
    ]
    seen = [step for step in run["peak_rss_mib_by_step"] if step != "start/end"]
    assert seen and seen == sorted(seen, key=order.index)
    assert max(run["peak_rss_mib_by_step"].values()) <= run["peak_rss_mib"]
    assert "Peak RSS by step, 2,000 records (MiB): " in table
    assert results["transform"]["records"] == 2000
    assert results["transform"]["mask_generalize_records_per_s"] > 0
    assert "Mask + generalize alone on 2,000 records" in table
    assert table in capsys.readouterr().out


def test_deployment_breakdown_splits_the_wait_at_the_first_state_of_each_kind():
    # Epoch seconds: the command starts at 100 and exits at 121; a second PENDING (a retry
    # would give one) must not move the worker pick-up.
    states = [
        ("COMPLETED", 117.5),
        ("RUNNING", 108.0),
        ("PENDING", 103.5),
        ("SCHEDULED", 102.0),
        ("PENDING", 110.0),
    ]
    split = wall.breakdown(100.0, 121.0, states)
    assert split == {
        "cli_to_created": 2.0,
        "created_to_pending": 1.5,
        "pending_to_running": 4.5,
        "running_to_completed": 9.5,
        "completed_to_exit": 3.5,
        "total": 21.0,
    }
    assert sum(split[key] for key, _ in wall.SEGMENTS) == pytest.approx(split["total"])


def test_deployment_breakdown_fails_loudly_without_a_completed_state():
    with pytest.raises(RuntimeError, match="no COMPLETED state"):
        wall.breakdown(0.0, 9.0, [("SCHEDULED", 1.0), ("PENDING", 2.0), ("RUNNING", 3.0)])


def test_deployment_figures_in_markdown():
    def run(total: float, gx: float | None) -> dict:
        split = dict.fromkeys((key for key, _ in wall.SEGMENTS), 1.0)
        return {**split, "total": total, "validate_masked": gx, "flow_run_cpu": 12.0}

    runs = {"prefect": [run(20.0, 3.0), run(24.0, 2.0), run(22.0, 4.0)]}
    runs["trigger"] = [run(18.0, None), run(17.0, 2.0), run(19.0, 2.0)]
    result = {"records": 30000, "runs": runs}
    result["median"] = {how: wall.median_of(done) for how, done in runs.items()}
    # A figure one run lacks is left out of the median, not counted as 0.
    assert result["median"]["prefect"]["validate_masked"] == 3.0
    assert "validate_masked" not in result["median"]["trigger"]
    text = wall.deployment_markdown(result)
    assert "A 30,000-record run of the daily deployment" in text
    assert "median of 3" in text
    prefect_line, trigger_line = text.splitlines()[1:]
    assert prefect_line.startswith(f"- {wall.COMMANDS['prefect']}: **22.0 s** (20.0, 24.0, 22.0)")
    assert "worker pick-up 1.0 s" in prefect_line
    assert "validate_masked (waiting for GX) 3.0 s" in prefect_line
    assert "CPU of the flow-run processes 12.0 s" in prefect_line
    assert trigger_line.startswith(f"- {wall.COMMANDS['trigger']}: **18.0 s**")
    assert "validate_masked" not in trigger_line
    table = bench.markdown(
        {
            "machine": {"cores": 2, "python": "3.11"},
            "started_at": "t",
            "runs": [_run(2000, {"total": 2.0})],
            "deployment": result,
        }
    )
    assert text in table
