"""The CLI's entry point, `python -m flows.cli`: its own module, light enough to start GX's
validator process before Prefect and the flow module load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cli_module_loads_neither_prefect_nor_gx() -> None:
    # What lets `python -m flows.cli` start the validator before Prefect's import: the module's
    # own imports stop short of both (flows.server and the flow module are imported when used).
    probe = (
        "import sys, flows.cli; "
        "print(sorted(m for m in ('prefect', 'great_expectations', 'flows.user_metrics') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The probe would see them: importing the flow module loads Prefect.
    probe = "import sys, flows.user_metrics; print('prefect' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "True", done.stderr


def test_the_summary_names_the_data_docs(capsys) -> None:
    from flows.cli import print_summary

    summary = {
        "run_date": "2026-10-31",
        "lake_file": "lake/raw/2026/10/31/persons.parquet",
        "duckdb_path": "db/faker.duckdb",
        "records_loaded": 10,
        "records_fetched": 10,
        "records_requested": 10,
        "pages": 1,
        "retries": 0,
        "seconds_total": 1.0,
        "k_min": 5,
        "extract_k_min": 5,
        "privacy_k": 5,
        "leak_outputs_scanned": 3,
        "leak_hits": 0,
        "extract_file": "lake/shareable/2026/10/31/persons.parquet",
        "answers": [],
        "artifacts": ["validation-results"],
        "data_docs": "/srv/gx/data_docs/index.html",
    }
    print_summary(summary)
    assert "Data Docs     /srv/gx/data_docs/index.html\n" in capsys.readouterr().out
    print_summary({**summary, "data_docs": None})  # a run that wrote none prints no line
    assert "Data Docs" not in capsys.readouterr().out
