"""Declared dependencies against uv.lock: every runtime and extra dependency has a lower bound, and
no lower bound is above a version the lock (and so a test run) uses."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def declared(pyproject: dict) -> dict[str, list[Requirement]]:
    """Every requirement pyproject declares, by where: runtime, each extra, each group."""
    project = pyproject["project"]
    found = {"dependencies": [Requirement(r) for r in project["dependencies"]]}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        found[f"extra {extra}"] = [Requirement(r) for r in reqs]
    for group, reqs in pyproject.get("dependency-groups", {}).items():
        found[f"group {group}"] = [Requirement(r) for r in reqs if isinstance(r, str)]
    return found


def locked(lock: dict) -> dict[str, list[Version]]:
    """The versions uv.lock pins per package (more than one where markers split them)."""
    versions: dict[str, list[Version]] = {}
    for package in lock["package"]:
        if "version" in package:
            versions.setdefault(canonicalize_name(package["name"]), []).append(
                Version(package["version"])
            )
    return versions


def bound_problems(pyproject: dict, lock: dict) -> list[str]:
    """A line per requirement without a lower bound (outside the dev group) or with one above a
    locked version."""
    versions = locked(lock)
    problems = []
    for where, reqs in declared(pyproject).items():
        for req in reqs:
            lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
            pinned = versions.get(canonicalize_name(req.name))
            if not pinned:
                problems.append(f"{where}: {req.name} is not in uv.lock")
            elif not lows and not where.startswith("group"):
                problems.append(f"{where}: {req.name} has no lower bound")
            elif lows and max(lows) > min(pinned):
                problems.append(
                    f"{where}: {req.name} {req.specifier} is above locked {min(pinned)}"
                )
    return problems


def read(name: str) -> dict:
    """A TOML file at the repository root."""
    return tomllib.loads((ROOT / name).read_text(encoding="utf-8"))


def test_every_lower_bound_is_a_locked_version_or_below() -> None:
    assert bound_problems(read("pyproject.toml"), read("uv.lock")) == []


def test_the_check_finds_a_bound_above_the_lock_and_a_missing_bound() -> None:
    pyproject = {
        "project": {
            "dependencies": ["duckdb>=2.0.2", "orjson"],
            "optional-dependencies": {"dask": ["prefect-dask>=0.3.7"]},
        },
        "dependency-groups": {"dev": ["pytest"]},
    }
    lock = {
        "package": [
            {"name": "duckdb", "version": "2.0.1"},
            {"name": "orjson", "version": "3.13.0"},
            {"name": "prefect-dask", "version": "0.3.7"},
            {"name": "pytest", "version": "9.0.0"},
        ]
    }
    assert bound_problems(pyproject, lock) == [
        "dependencies: duckdb >=2.0.2 is above locked 2.0.1",
        "dependencies: orjson has no lower bound",
    ]


def test_a_package_locked_twice_is_held_to_its_lower_version() -> None:
    # numpy is locked once per Python range: a bound must hold on the oldest Python too.
    pyproject = {"project": {"dependencies": ["numpy>=2.5"]}}
    lock = {
        "package": [
            {"name": "numpy", "version": "2.4.6"},
            {"name": "numpy", "version": "2.5.5"},
        ]
    }
    assert bound_problems(pyproject, lock) == ["dependencies: numpy >=2.5 is above locked 2.4.6"]


def test_dask_is_an_extra_not_a_runtime_dependency() -> None:
    found = declared(read("pyproject.toml"))
    runtime = {canonicalize_name(r.name) for r in found["dependencies"]}
    assert not runtime & {"prefect-dask", "dask", "distributed"}
    assert "prefect-dask" in {canonicalize_name(r.name) for r in found["extra dask"]}
