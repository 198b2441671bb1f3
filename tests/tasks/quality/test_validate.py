"""Tests for tasks.quality.validate: real GX (checkpoints, Data Docs), imported once per session."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.common.schemas import ANALYTICAL_SCHEMA, MASK, MASKED_COLUMNS, RAW_SCHEMA
from tasks.quality import gx_suites, validator
from tasks.quality.gx_suites import SuiteLoadError, load_suite_file
from tasks.quality.gx_validation import (
    ANALYTICAL_SUITE_PATH,
    CODES_PER_COUNTRY,
    MASKED_SUITE_PATH,
    ValidationSummary,
    _regex_columns,
    _validation_frame,
    warm_up,
    warm_up_batches,
)
from tasks.quality.validate import (
    ValidationError,
    validate_analytical,
    validate_masked,
    validation_artifact,
)
from tests.builders import AGE_GROUP_LABELS, cycled_batch, masked_batch, plant

RUN_DATE = date(2025, 3, 14)
ROWS = 200
PLANTED = "Zelda.Planted@example.org"
COUNTRIES = [
    ("Germany", "DE"),
    ("France", "FR"),
    ("C\u00f4te d\u2019Ivoire", "CI"),
    ("Bosnia & Herzegovina", "BA"),
]
DOMAINS = ["gmail.com", "hotmail.com", "yahoo.com", "fahey-jerde.example.co.uk"]


def _key(i: int) -> str:
    return hashlib.sha256(f"person-{i}".encode()).hexdigest()


def make_raw(n: int = ROWS) -> pa.Table:
    """A valid masked raw batch of n rows."""
    return masked_batch(n, RUN_DATE, domains=DOMAINS, countries=COUNTRIES, key=_key)


def make_analytical(n: int = ROWS) -> pa.Table:
    """A valid analytical batch of n rows."""
    return cycled_batch(n, RUN_DATE, domains=DOMAINS, countries=COUNTRIES, key=_key)


def assert_no_leak(summary: ValidationSummary, *secrets: str) -> None:
    """No planted value appears anywhere a summary can travel to."""
    texts = [
        repr(summary),
        str(summary),
        json.dumps(summary.to_rows(), default=str),
        summary.failures_text(),
        str(ValidationError(summary)),
    ]
    for secret in secrets:
        for text in texts:
            assert secret not in text


@pytest.fixture(scope="session", autouse=True)
def gx_ready() -> None:
    """Pay the GX import and suite loading once for the whole session."""
    gx_suites.gx()
    gx_suites.suite(MASKED_SUITE_PATH)
    gx_suites.suite(ANALYTICAL_SUITE_PATH)


@pytest.fixture(autouse=True)
def in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate in this process: an earlier flow test may have left this pytest worker its
    validator process, and these tests look at GX's state here (test_validator.py tests it)."""
    monkeypatch.setattr(validator, "_current", None)


def test_import_does_not_import_great_expectations() -> None:
    code = "import sys, tasks.quality.validate; sys.exit('great_expectations' in sys.modules)"
    root = Path(__file__).resolve().parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_valid_batches_pass() -> None:
    masked = validate_masked(make_raw(), ROWS)
    analytical = validate_analytical(make_analytical(), ROWS)
    expected = (
        len(_suite_json(p)["expectations"]) for p in (MASKED_SUITE_PATH, ANALYTICAL_SUITE_PATH)
    )
    for summary, count in zip((masked, analytical), expected, strict=True):
        assert summary.success, summary.failures_text()
        assert (summary.failed, summary.evaluated, summary.rows) == (0, count, ROWS)
        assert all(outcome.success for outcome in summary.results)
        assert "all" in summary.failures_text()
    assert masked.suite == "masked_persons"
    assert analytical.suite == "analytical_persons"


Mutation = Callable[[pa.Table], pa.Table]

Defect = tuple[str, Mutation, set[str], str]


def extra_column(name: str) -> Defect:
    """A column the suite does not list, full of a planted value."""
    return (
        "extra column",
        lambda t: t.append_column(name, pa.array([PLANTED] * t.num_rows)),
        {"expect_table_columns_to_match_ordered_list"},
        PLANTED,
    )


def missing_column(name: str, *checks: str) -> Defect:
    """A column dropped: the column list fails, and so does every check on the column."""
    return (
        "missing column",
        lambda t: t.drop_columns([name]),
        {"expect_table_columns_to_match_ordered_list", *(f"{c}({name})" for c in checks)},
        PLANTED,
    )


# Both suites check country codes and person keys the same way.
SHARED_DEFECTS: list[Defect] = [
    (
        "lower-case country code",
        lambda t: plant(t, "country_code", 0, "de"),
        {
            "expect_column_values_to_match_regex(country_code)",
            f"expect_column_values_to_be_between({CODES_PER_COUNTRY})",
        },
        "'de'",
    ),
    (
        "one country with two codes",
        lambda t: plant(t, "country_code", 4, "ZQ"),
        {f"expect_column_values_to_be_between({CODES_PER_COUNTRY})"},
        "ZQ",
    ),
    (
        "duplicate person_key",
        lambda t: plant(t, "person_key", 1, t["person_key"][0].as_py()),
        {"expect_column_values_to_be_unique(person_key)"},
        _key(0),
    ),
]

RAW_DEFECTS: list[Defect] = [
    (
        "unmasked firstname",
        lambda t: plant(t, "firstname", 7, "ZeldaPlanted"),
        {"expect_column_values_to_be_in_set(firstname)"},
        "ZeldaPlanted",
    ),
    (
        "email without mask",
        lambda t: plant(t, "email", 3, PLANTED),
        {"expect_column_values_to_match_regex(email)"},
        PLANTED,
    ),
    (
        "unmasked latitude",
        lambda t: plant(t, "latitude", 5, "52.5200066"),
        {"expect_column_values_to_be_in_set(latitude)"},
        "52.5200066",
    ),
    (
        "age out of range",
        lambda t: plant(t, "age", 9, 131),
        {"expect_column_values_to_be_between(age)"},
        "131",
    ),
    (
        "gender outside the set",
        lambda t: plant(t, "gender", 4, "ZeldaGender"),
        {"expect_column_values_to_be_in_set(gender)"},
        "ZeldaGender",
    ),
    *SHARED_DEFECTS,
    (
        "malformed person_key",
        lambda t: plant(t, "person_key", 2, "ZELDA" * 4),
        {"expect_column_values_to_match_regex(person_key)"},
        "ZELDA",
    ),
    extra_column("ssn"),
    missing_column(
        "gender", "expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set"
    ),
    (
        "null country",
        lambda t: plant(t, "country", 6, None),
        {"expect_column_values_to_not_be_null(country)"},
        PLANTED,
    ),
]

ANALYTICAL_DEFECTS: list[Defect] = [
    (
        "bad age_group",
        lambda t: plant(t, "age_group", 3, "[Zelda-Planted]"),
        {"expect_column_values_to_be_in_set(age_group)"},
        "Zelda-Planted",
    ),
    (
        "upper-case email_domain",
        lambda t: plant(t, "email_domain", 3, "Zelda.Planted.ORG"),
        {"expect_column_values_to_match_regex(email_domain)"},
        "Zelda.Planted",
    ),
    (
        "email_domain without a dot",
        lambda t: plant(t, "email_domain", 3, "zeldaplanted"),
        {"expect_column_values_to_match_regex(email_domain)"},
        "zeldaplanted",
    ),
    *SHARED_DEFECTS,
    (
        "two run dates",
        lambda t: plant(t, "run_date", 1, date(2025, 3, 15)),
        {"expect_column_unique_value_count_to_be_between(run_date)"},
        "2025-03-15",
    ),
    extra_column("email"),
    missing_column(
        "email_domain",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_match_regex",
    ),
]


def _check_defect(summary: ValidationSummary, expected: set[str], secret: str) -> None:
    failed = {outcome.label() for outcome in summary.failures()}
    assert not summary.success
    assert failed == expected, summary.failures_text()
    assert summary.failed == len(expected)
    for label in expected:
        assert label in summary.failures_text()
    assert_no_leak(summary, secret)
    # As the flow fails a run on it: the error carries the summary and says its failures.
    error = ValidationError(summary)
    assert error.summary is summary and str(error) == summary.failures_text()


@pytest.mark.parametrize(
    ("mutate", "expected", "secret"),
    [case[1:] for case in RAW_DEFECTS],
    ids=[case[0] for case in RAW_DEFECTS],
)
def test_masked_defect_fails(mutate: Mutation, expected: set[str], secret: str) -> None:
    _check_defect(validate_masked(mutate(make_raw()), ROWS), expected, secret)


@pytest.mark.parametrize(
    ("mutate", "expected", "secret"),
    [case[1:] for case in ANALYTICAL_DEFECTS],
    ids=[case[0] for case in ANALYTICAL_DEFECTS],
)
def test_analytical_defect_fails(mutate: Mutation, expected: set[str], secret: str) -> None:
    _check_defect(validate_analytical(mutate(make_analytical()), ROWS), expected, secret)


@pytest.mark.parametrize("validate", [validate_masked, validate_analytical])
@pytest.mark.parametrize("requested", [ROWS - 1, ROWS + 1])
def test_wrong_row_count_fails(validate: Callable, requested: int) -> None:
    table = make_raw() if validate is validate_masked else make_analytical()
    summary = validate(table, requested)
    assert [outcome.label() for outcome in summary.failures()] == [
        "expect_table_row_count_to_equal"
    ]
    assert summary.rows == ROWS


def test_failing_outcome_reports_counts() -> None:
    table = plant(plant(make_raw(), "firstname", 1, "Zelda"), "firstname", 2, "Zelda")
    summary = validate_masked(table, ROWS)
    (outcome,) = summary.failures()
    assert (outcome.element_count, outcome.unexpected_count) == (ROWS, 2)
    assert outcome.unexpected_percent == pytest.approx(1.0)
    assert summary.results[0] is outcome  # failures come first in artifacts
    assert "[2 rows]" in summary.failures_text()
    row = summary.to_rows()[0]
    assert set(row) == {
        "suite",
        "expectation",
        "column",
        "success",
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "raised_exception",
    }


def test_gx_result_itself_carries_no_values() -> None:
    """The result format keeps values out of GX's own result too, in case anyone logs it."""
    table = plant(make_raw(), "email", 3, PLANTED)
    with gx_suites.LOCK:
        context, checkpoint = gx_suites.checkpoint(MASKED_SUITE_PATH, "masked_persons", None)
        try:
            run = checkpoint.run(
                batch_parameters={"dataframe": _validation_frame(table)},
                expectation_parameters={"expected_rows": ROWS},
            )
        finally:
            gx_suites.release(context)
    assert not run.success
    (result,) = run.run_results.values()
    assert [r.expectation_config.type for r in result.results if not r.success] == [
        "expect_column_values_to_match_regex"
    ]
    assert PLANTED not in json.dumps(run.describe_dict(), default=str)
    assert PLANTED not in json.dumps(result.to_json_dict(), default=str)


def _files_text(root: Path) -> dict[Path, str]:
    """Every text file GX wrote under root (HTML pages, stored results), by path."""
    return {
        path: path.read_text(encoding="utf-8")
        for path in root.rglob("*")
        if path.is_file() and path.suffix in {".html", ".json"}
    }


def test_data_docs_show_counts_never_values(tmp_path: Path) -> None:
    gx_dir = tmp_path / "gx"
    planted = {"firstname": "Zelda.Planted", "email": PLANTED, "latitude": "52.5200066"}
    table = make_raw()
    for row, (column, value) in enumerate(planted.items()):
        table = plant(table, column, row + 3, value)
    summary = validate_masked(table, ROWS, gx_dir)
    assert not summary.success and summary.failed == len(planted)
    index = gx_dir.resolve() / "data_docs" / "index.html"
    assert summary.data_docs == str(index) and index.is_file()
    pages = list((gx_dir / "data_docs" / "validations" / "masked_persons").rglob("*.html"))
    assert len(pages) == 1
    # Filed under the run's date, which the index shows as the run's name.
    assert f"run-date-{RUN_DATE}" in pages[0].parts
    page = pages[0].read_text(encoding="utf-8")
    # The page shows what failed and how many rows did (3 failing of 29 evaluated).
    assert "Unsuccessful Expectations" in page and "firstname" in page
    assert pages[0].relative_to(gx_dir / "data_docs").as_posix() in index.read_text("utf-8")
    written = _files_text(gx_dir)
    assert any(path.suffix == ".json" for path in written)  # the results the site renders
    for path, text in written.items():
        for value in planted.values():
            assert value not in text, f"{value!r} reached {path}"


def test_data_docs_keep_every_run(tmp_path: Path) -> None:
    gx_dir = tmp_path / "gx"
    assert validate_masked(make_raw(), ROWS, gx_dir).success
    assert not validate_masked(make_raw(), ROWS + 1, gx_dir).success
    assert validate_analytical(make_analytical(), ROWS, gx_dir).success
    docs = gx_dir / "data_docs" / "validations"
    assert len(list((docs / "masked_persons").rglob("*.html"))) == 2
    assert len(list((docs / "analytical_persons").rglob("*.html"))) == 1
    index = (gx_dir / "data_docs" / "index.html").read_text(encoding="utf-8")
    for page in docs.rglob("*.html"):
        assert page.relative_to(gx_dir / "data_docs").as_posix() in index


def test_data_docs_keep_the_latest_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gx_suites, "RUNS_KEPT", 2)
    gx_dir = tmp_path / "gx"
    for rows in (ROWS, ROWS + 1, ROWS + 2):  # three runs told apart by their row counts
        validate_masked(make_raw(), rows, gx_dir)
    assert validate_analytical(make_analytical(), ROWS, gx_dir).success
    results = sorted((gx_dir / "validations" / "masked_persons").rglob("*.json"))
    assert len(results) == 2
    # The oldest run (the only one that passed) is gone; the two latest are kept.
    assert all('"success": false' in path.read_text(encoding="utf-8") for path in results)
    docs = gx_dir / "data_docs" / "validations"
    assert len(list((docs / "masked_persons").rglob("*.html"))) == 2
    assert len(list((docs / "analytical_persons").rglob("*.html"))) == 1


def test_without_a_gx_folder_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    summary = validate_masked(make_raw(), ROWS)
    assert summary.success and summary.data_docs is None
    assert list(tmp_path.iterdir()) == []


def test_warm_up_leaves_no_site_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    warm_up()
    assert list(tmp_path.iterdir()) == []


def test_validation_artifact_names_the_data_docs(tmp_path: Path) -> None:
    summaries = [
        validate_masked(make_raw(), ROWS, tmp_path / "gx"),
        validate_analytical(make_analytical(), ROWS, tmp_path / "gx"),
    ]
    artifact = validation_artifact(summaries, RUN_DATE)
    index = (tmp_path / "gx").resolve() / "data_docs" / "index.html"
    assert artifact.description.count(str(index)) == 1
    assert len(artifact.table or []) == sum(s.evaluated for s in summaries)
    assert (
        "Data Docs"
        not in validation_artifact([validate_masked(make_raw(), ROWS)], RUN_DATE).description
    )


def test_codes_per_country_is_derived_per_batch() -> None:
    frame = _validation_frame(plant(make_raw(8), "country_code", 0, "XX"))
    germany = frame[frame["country"] == "Germany"][CODES_PER_COUNTRY]
    france = frame[frame["country"] == "France"][CODES_PER_COUNTRY]
    assert set(germany) == {2} and set(france) == {1}


def test_regex_columns_follow_the_suites() -> None:
    assert _regex_columns(gx_suites.suite(MASKED_SUITE_PATH)) == {
        "person_key",
        "email",
        "country_code",
    }
    assert _regex_columns(gx_suites.suite(ANALYTICAL_SUITE_PATH)) == {
        "person_key",
        "email_domain",
        "country_code",
    }


def test_validation_frame_changes_representations_not_values() -> None:
    # Several chunks, as the flow's concatenated page ranges arrive.
    table = pa.concat_tables([make_raw(1500).slice(0, 700), make_raw(1500).slice(700)])
    table = plant(table, "city", 3, None)
    frame = _validation_frame(table, plain={"email", "country_code"})
    assert list(frame.columns) == [*table.column_names, CODES_PER_COUNTRY]
    dtypes = {name: str(frame[name].dtype) for name in table.column_names}
    # Repeated values as categoricals, unique keys and regex-checked columns as plain strings,
    # narrow integers widened for GX's vectorized `between`.
    assert dtypes["firstname"] == dtypes["gender"] == dtypes["country"] == "category"
    assert dtypes["person_key"] == dtypes["email"] == dtypes["country_code"] == "str"
    assert dtypes["age"] == "int64"
    plain = table.to_pandas(date_as_object=False)
    for name in table.column_names:
        assert frame[name].astype(object).tolist() == plain[name].astype(object).tolist(), name
    assert frame[CODES_PER_COUNTRY].eq(1).all()


def test_warm_up_batches_are_valid() -> None:
    # A warm-up that failed validation would warm up the failure paths instead.
    masked, analytical = warm_up_batches()
    assert validate_masked(masked, masked.num_rows).success
    assert validate_analytical(analytical, analytical.num_rows).success
    frame = _validation_frame(masked)
    assert str(frame["firstname"].dtype) == "category"
    assert str(frame["person_key"].dtype) == "str"
    warm_up()


def test_the_data_fingerprint_switch_still_exists() -> None:
    """The one private GX name the project uses (listed in the README): GX md5-hashes every
    pandas batch smaller than HASH_THRESHOLD, seconds per million rows, with no public switch.
    If a GX release moves it, this fails instead of validation silently slowing down."""
    from great_expectations.execution_engine import pandas_execution_engine

    assert pandas_execution_engine.HASH_THRESHOLD == 0
    with gx_suites.LOCK:
        context, checkpoint = gx_suites.checkpoint(MASKED_SUITE_PATH, "masked_persons", None)
        try:
            run = checkpoint.run(
                batch_parameters={"dataframe": _validation_frame(make_raw())},
                expectation_parameters={"expected_rows": ROWS},
            )
        finally:
            gx_suites.release(context)
    (result,) = run.run_results.values()
    markers = result.meta["batch_markers"]
    assert "ge_load_time" in markers and "pandas_data_fingerprint" not in markers


def test_concurrent_validations_do_not_mix_batches() -> None:
    good, bad = make_raw(), plant(make_raw(), "firstname", 0, "Zelda")
    results: dict[int, bool] = {}

    def run(i: int) -> None:
        results[i] = validate_masked(good if i % 2 else bad, ROWS).success

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: bool(i % 2) for i in range(6)}


def test_a_30k_row_batch_passes() -> None:
    # How long it takes is `make bench`'s (seconds validate), not a test's.
    summary = validate_masked(make_raw(30_000), 30_000)
    assert summary.success, summary.failures_text()
    assert summary.rows == 30_000


# --- suite files -------------------------------------------------------------------------------


def _suite_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _kwargs(data: dict, type_: str, column: str | None = None) -> list[dict]:
    return [
        e["kwargs"]
        for e in data["expectations"]
        if e["type"] == type_ and (column is None or e["kwargs"].get("column") == column)
    ]


@pytest.mark.parametrize("path", [MASKED_SUITE_PATH, ANALYTICAL_SUITE_PATH])
def test_shipped_suites_load_completely(path: Path) -> None:
    suite, count = load_suite_file(path)
    assert count == len(_suite_json(path)["expectations"]) == len(suite.expectations)


@pytest.mark.parametrize(
    ("path", "schema"),
    [(MASKED_SUITE_PATH, RAW_SCHEMA), (ANALYTICAL_SUITE_PATH, ANALYTICAL_SCHEMA)],
)
def test_suite_files_follow_the_schemas(path: Path, schema: pa.Schema) -> None:
    data = _suite_json(path)
    (columns,) = _kwargs(data, "expect_table_columns_to_match_ordered_list")
    assert columns["column_list"] == [*schema.names, CODES_PER_COUNTRY]
    (rows,) = _kwargs(data, "expect_table_row_count_to_equal")
    assert rows["value"] == {"$PARAMETER": "expected_rows"}
    assert _kwargs(data, "expect_column_values_to_be_between", CODES_PER_COUNTRY) == [
        {"column": CODES_PER_COUNTRY, "min_value": 1, "max_value": 1}
    ]
    (gender,) = _kwargs(data, "expect_column_values_to_be_in_set", "gender")
    assert set(gender["value_set"]) == {"male", "female"}
    not_null = {k["column"] for k in _kwargs(data, "expect_column_values_to_not_be_null")}
    assert {"person_key", "run_date", "gender", "country", "country_code"} <= not_null
    assert _kwargs(data, "expect_column_values_to_be_unique", "person_key")


def test_masked_suite_checks_every_masked_column() -> None:
    data = _suite_json(MASKED_SUITE_PATH)
    for name in MASKED_COLUMNS:
        assert _kwargs(data, "expect_column_values_to_be_in_set", name) == [
            {"column": name, "value_set": [MASK]}
        ]
    (age,) = _kwargs(data, "expect_column_values_to_be_between", "age")
    assert (age["min_value"], age["max_value"]) == (0, 130)


def test_analytical_suite_age_groups() -> None:
    (groups,) = _kwargs(
        _suite_json(ANALYTICAL_SUITE_PATH), "expect_column_values_to_be_in_set", "age_group"
    )
    assert groups["value_set"] == list(AGE_GROUP_LABELS)


def test_loader_rejects_unknown_expectation_type(tmp_path: Path) -> None:
    data = _suite_json(MASKED_SUITE_PATH)
    data["expectations"].append(
        {"type": "expect_column_values_to_be_bogus", "kwargs": {"column": "gender"}}
    )
    path = tmp_path / "bogus.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SuiteLoadError, match="expect_column_values_to_be_bogus") as raised:
        load_suite_file(path)
    assert f"1 of {len(data['expectations'])}" in str(raised.value)


def test_loader_rejects_invalid_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "bad_kwargs.json"
    path.write_text(
        json.dumps(
            {
                "name": "bad",
                "expectations": [
                    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}},
                    {"type": "expect_column_values_to_be_in_set", "kwargs": {}},
                ],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(SuiteLoadError, match="expect_column_values_to_be_in_set"):
        load_suite_file(path)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"expectations": []}),
        json.dumps({"name": "old", "expectations": [{"expectation_type": "x", "kwargs": {}}]}),
    ],
    ids=["not-json", "no-name", "gx0-key"],
)
def test_loader_rejects_malformed_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "suite.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SuiteLoadError):
        load_suite_file(path)


def test_gx_keeps_nothing_of_a_validated_batch(tmp_path: Path) -> None:
    """GX would hold every validated frame and metric for as long as its context lives (a
    million-row frame through the rest of the run)."""
    import gc

    import pandas as pd

    rows = ROWS + 7  # a length no other frame of the session has
    assert validate_masked(make_raw(rows), rows, tmp_path / "gx").success
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and len(o) == rows]
