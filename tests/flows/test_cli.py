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
