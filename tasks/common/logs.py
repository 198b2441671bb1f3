"""Where the pipeline's log lines go: the Prefect run's logs when there is a run, so they show
in the UI (fetch retries, drift warnings, lock waits), else the module's own logger."""

from __future__ import annotations

import logging
from typing import TypeAlias

Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]


def run_logger(name: str) -> Logger:
    """The current flow or task run's logger; `logging.getLogger(name)` outside a run.

    A plain module logger is not shipped to the Prefect API, so inside a run the line would be
    missing from the run's logs in the UI. Log lines never hold data values either way.
    """
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
