"""The names of the project's flows, as Prefect and its UI show them.

The flows take them (flows/user_metrics.py); `--check` and each run's start find the flow runs
a killed process left by them (flows/leftovers.py), which the flow module's own imports reach.
"""

from __future__ import annotations

FLOW_NAME = "user-metrics-pipeline"
BACKFILL_FLOW_NAME = "user-metrics-backfill"
