"""Quality: the Great Expectations suites of both layers, schema drift between runs, and the
quarantine of a batch that fails (masked once more, leak-scanned before it is written)."""

from tasks.quality.drift import accepts, compare_signatures, drift_markdown, enforce_policy
from tasks.quality.validate import (
    ValidationError,
    prewarm,
    quarantine,
    validate_analytical_task,
    validate_masked_task,
    validation_artifact,
)

__all__ = [
    "ValidationError",
    "accepts",
    "compare_signatures",
    "drift_markdown",
    "enforce_policy",
    "prewarm",
    "quarantine",
    "validate_analytical_task",
    "validate_masked_task",
    "validation_artifact",
]
