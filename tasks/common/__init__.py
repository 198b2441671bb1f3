"""Plumbing every concern package shares: settings and secrets, the run's inputs and record,
errors that hold no values, the Arrow schemas between steps, and `as_task` (a function -> a task).

This package's `__init__` imports nothing, so that its light modules (secrets, settings, errors)
cost no Prefect import (see tasks/quality/validator.py). Import from the modules.
"""
