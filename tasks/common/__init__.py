"""Plumbing every stage shares: settings and secrets, the run's inputs and record, errors that
hold no values, the Arrow schemas between stages, and `stage_task`, which makes a stage a task."""

from tasks.common.errors import PipelineError, value_free
from tasks.common.inputs import RunOptions
from tasks.common.run_config import RunConfig, checked_run_config
from tasks.common.run_record import RunRecord
from tasks.common.stage import stage_task

__all__ = [
    "PipelineError",
    "RunConfig",
    "RunOptions",
    "RunRecord",
    "checked_run_config",
    "stage_task",
    "value_free",
]
