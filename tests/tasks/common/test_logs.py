"""tasks/common/logs.py: inside a run, the pipeline's log lines go to the run's logs (the UI)."""

from __future__ import annotations

import logging

from prefect import flow, task

from tasks.common.logs import run_logger


def test_outside_a_run_it_is_the_module_logger() -> None:
    assert run_logger("tasks.ingest.fetch") is logging.getLogger("tasks.ingest.fetch")


def test_inside_a_flow_or_task_it_is_the_run_logger(prefect_storage) -> None:
    @task
    def in_task() -> str:
        return run_logger("x").name

    @flow
    def in_flow() -> tuple[str, str]:
        return run_logger("x").name, in_task()

    assert in_flow() == ("prefect.flow_runs", "prefect.task_runs")
