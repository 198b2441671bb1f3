"""Reporting: the report queries, the charts, the markdown and table artifacts (composed in
memory, created after the commit), the privacy report and the failure report."""

from tasks.reporting.artifacts import (
    DRIFT_ARTIFACT_KEY,
    FAILURE_ARTIFACT_KEY,
    Artifact,
    create_artifacts,
)
from tasks.reporting.compose import Composed, compose_user_metrics_task
from tasks.reporting.failure_report import failure_markdown
from tasks.reporting.privacy_report import privacy_artifact, privacy_markdown, privacy_run_columns

__all__ = [
    "DRIFT_ARTIFACT_KEY",
    "FAILURE_ARTIFACT_KEY",
    "Artifact",
    "Composed",
    "compose_user_metrics_task",
    "create_artifacts",
    "failure_markdown",
    "privacy_artifact",
    "privacy_markdown",
    "privacy_run_columns",
]
