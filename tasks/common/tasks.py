"""The one way a function becomes a Prefect task: `x_task = as_task(x)`, beside `x`.

Rule of the house: every task is a plain typed function that tests call directly; its Prefect
task is defined right below it, named `<function>_task`, with the function's name in the UI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from tasks.common.errors import raises_value_free

P = ParamSpec("P")
R = TypeVar("R")


def as_task(fn: Callable[P, R], **options: Any) -> Task[P, R]:
    """A Prefect task running `fn`: results in memory only, errors free of source values.

    Some tasks hold raw records, and none needs Prefect's result persistence or cache: results
    are never persisted and batches never hashed for cache keys. Any error leaving the task is
    `tasks.common.errors.value_free` before Prefect logs it.
    """
    return task(
        name=fn.__name__,
        persist_result=False,
        cache_policy=NO_CACHE,
        **options,
    )(raises_value_free(fn))
