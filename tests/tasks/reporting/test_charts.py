"""Chart builders, browser discovery and one-session PNG rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

# Imported up front so its import time (~2 s) is not charged to the timing assertions below.
import prefect.logging  # noqa: F401
import pytest

from tasks.reporting import charts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def top_countries() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": [1, 2, 2, 3],
            "country": ["Germany", "Spain", "France", "Côte d\u2019Ivoire"],
            "gmail_users": [12, 10, 10, 9],
        }
    )


@pytest.fixture
def age_groups() -> pd.DataFrame:
    return pd.DataFrame({"age_group": ["[0-10]", "[60-70]", "[90+]"], "gmail_users": [3, 5, 7]})


@pytest.fixture
def history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_date": ["2024-05-03", "2024-05-01", "2024-05-02"],
            "gmail_share_pct": [17.5, 16.25, None],
            "german_users": [40, 80, 0],
        }
    )


def test_top_countries_chart_keeps_rank_order_and_ties(top_countries: pd.DataFrame) -> None:
    fig = charts.top_countries_chart(top_countries)
    (bar,) = fig.data
    assert isinstance(bar, go.Bar)
    # Ties sorted by name within their rank; rank order wins over alphabetical order.
    assert list(bar.x) == ["Germany", "France", "Spain", "Côte d\u2019Ivoire"]
    assert list(bar.y) == [12, 10, 10, 9]
    assert list(bar.text) == ["#1: 12", "#2: 10", "#2: 10", "#3: 9"]
    assert fig.layout.xaxis.title.text == "Country"
    assert fig.layout.yaxis.title.text == "Gmail users"
    assert "Top countries" in fig.layout.title.text


def test_top_countries_chart_empty() -> None:
    empty = pd.DataFrame({"rank": [], "country": [], "gmail_users": []})
    fig = charts.top_countries_chart(empty)
    assert list(fig.data[0].x) == []


def test_age_group_chart_shows_every_group_in_label_order(age_groups: pd.DataFrame) -> None:
    fig = charts.age_group_chart(age_groups.iloc[::-1])
    (bar,) = fig.data
    assert list(bar.x) == list(charts.AGE_GROUPS)
    expected = dict.fromkeys(charts.AGE_GROUPS, 0) | {"[0-10]": 3, "[60-70]": 5, "[90+]": 7}
    assert list(bar.y) == list(expected.values())
    assert fig.layout.xaxis.title.text.startswith("Age group")
    assert fig.layout.yaxis.title.text == "Gmail users"


def test_history_chart_sorts_dates_and_leaves_gaps(history: pd.DataFrame) -> None:
    fig = charts.history_chart(history)
    assert fig is not None
    (line,) = fig.data
    assert isinstance(line, go.Scatter)
    assert list(line.x) == ["2024-05-01", "2024-05-02", "2024-05-03"]
    assert list(line.y) == [16.25, None, 17.5]
    assert line.connectgaps is False
    assert fig.layout.yaxis.title.text == "Gmail share (%)"


def test_history_chart_needs_two_dates(history: pd.DataFrame) -> None:
    assert charts.history_chart(history.iloc[:1]) is None
    same_day = pd.concat([history.iloc[:1], history.iloc[:1]])
    assert charts.history_chart(same_day) is None


def test_build_charts_skips_history_with_one_date(
    top_countries: pd.DataFrame, age_groups: pd.DataFrame, history: pd.DataFrame
) -> None:
    one = charts.build_charts(top_countries, age_groups, history.iloc[:1])
    assert set(one) == {charts.CHART_TOP_COUNTRIES, charts.CHART_AGE_GROUPS}
    all_three = charts.build_charts(top_countries, age_groups, history)
    assert set(all_three) == {
        charts.CHART_TOP_COUNTRIES,
        charts.CHART_AGE_GROUPS,
        charts.CHART_HISTORY,
    }


def test_find_browser_prefers_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("CHROME_PATH", str(fake))
    assert charts.find_browser() == str(fake)


def test_find_browser_wrong_env_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    assert charts.find_browser(allow_download=True) is None


def test_find_browser_download_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import kaleido

    def stuck_download() -> str:
        time.sleep(30)
        return "/never"

    monkeypatch.setattr(kaleido, "get_chrome_sync", stuck_download)
    started = time.monotonic()
    assert charts._download_chrome(timeout=0.5) is None
    assert time.monotonic() - started < 5


@pytest.fixture
def no_browser_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in charts.BROWSER_ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every kaleido browser opened during the test (to check there is only one session)."""
    import kaleido

    sessions: list[object] = []
    real_open = kaleido.Kaleido.open

    async def counting_open(self: kaleido.Kaleido) -> None:
        sessions.append(self)
        await real_open(self)

    monkeypatch.setattr(kaleido.Kaleido, "open", counting_open)
    return sessions


def assert_pngs(pngs: dict[str, bytes | None], figures: dict, width: int, height: int) -> None:
    """One decodable PNG of the requested size per figure."""
    assert set(pngs) == set(figures)
    for name, png in pngs.items():
        assert png is not None and png.startswith(PNG_MAGIC), name
        # IHDR width/height, at scale 1.
        assert int.from_bytes(png[16:20], "big") == width, name
        assert int.from_bytes(png[20:24], "big") == height, name


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_render_pngs_with_chromium_one_session(
    no_browser_env: None,
    opened: list[object],
    top_countries: pd.DataFrame,
    age_groups: pd.DataFrame,
    history: pd.DataFrame,
) -> None:
    figures = charts.build_charts(top_countries, age_groups, history)
    started = time.monotonic()
    pngs = charts.render_pngs(figures, width=600, height=300)
    elapsed = time.monotonic() - started
    print(f"rendered {len(pngs)} charts in {elapsed:.2f} s")

    assert_pngs(pngs, figures, 600, 300)
    assert len(opened) == 1


def test_render_pngs_without_browser_returns_none(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    top_countries: pd.DataFrame,
    age_groups: pd.DataFrame,
) -> None:
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    monkeypatch.delenv(charts.ALLOW_DOWNLOAD_ENV, raising=False)
    figures = charts.build_charts(top_countries, age_groups, pd.DataFrame())
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        pngs = charts.render_pngs(figures)
    assert pngs == dict.fromkeys(figures)
    assert time.monotonic() - started < 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "not rendered" in warnings[0] and "BROWSER_PATH" in warnings[0]


def test_render_pngs_with_broken_browser_returns_none(
    tmp_path: Path, top_countries: pd.DataFrame
) -> None:
    # An executable that is not a browser: kaleido fails to talk to it, we must not raise.
    broken = tmp_path / "not-a-browser"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    started = time.monotonic()
    pngs = charts.render_pngs(
        {"top": charts.top_countries_chart(top_countries)}, browser=str(broken), timeout=10
    )
    assert pngs == {"top": None}
    assert time.monotonic() - started < 30


def test_render_pngs_no_figures() -> None:
    assert charts.render_pngs({}) == {}


@pytest.mark.slow
def test_render_pngs_with_stuck_browser_is_bounded(
    tmp_path: Path, top_countries: pd.DataFrame
) -> None:
    # Starts and then never speaks the DevTools protocol: the deadline must end it.
    stuck = tmp_path / "stuck-browser"
    stuck.write_text("#!/bin/sh\nexec sleep 120\n")
    stuck.chmod(0o755)
    started = time.monotonic()
    pngs = charts.render_pngs(
        {"top": charts.top_countries_chart(top_countries)}, browser=str(stuck), timeout=2
    )
    elapsed = time.monotonic() - started
    print(f"stuck browser given up after {elapsed:.2f} s")
    assert pngs == {"top": None}
    assert elapsed < 2 + charts._CLOSE_GRACE_SECONDS + charts._JOIN_MARGIN_SECONDS + 6


# --- pre-started browser ------------------------------------------------------------------------


def _browser_processes() -> set[tuple[int, float]]:
    """(pid, start time) of every Chromium process below this one: wrapper, browser, helpers."""
    psutil = pytest.importorskip("psutil")
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in " ".join(proc.cmdline()).lower():
                found.add((proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return found


def _still_running(processes: set[tuple[int, float]], wait: float = 10.0) -> set[int]:
    """The pids that still run after up to `wait` s; helpers left orphaned count too."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + wait
    while True:
        alive = set()
        for pid, started in processes:
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.Error:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_prestart_then_render_from_another_thread(
    no_browser_env: None,
    opened: list[object],
    top_countries: pd.DataFrame,
    age_groups: pd.DataFrame,
    history: pd.DataFrame,
) -> None:
    import threading

    figures = charts.build_charts(top_countries, age_groups, history)

    started = time.monotonic()
    session = charts.prestart()
    assert time.monotonic() - started < 1, "prestart must return at once"
    try:
        assert session.wait_ready(60)
        running = _browser_processes()
        assert running, "the pre-started browser should be running"
        results: list[dict[str, bytes | None]] = []
        # The flow renders in a task thread, not the thread that pre-started the browser.
        worker = threading.Thread(
            target=lambda: results.append(charts.render_pngs(figures, width=600, height=300))
        )
        rendered = time.monotonic()
        worker.start()
        worker.join(60)
        print(f"rendered {len(figures)} charts in {time.monotonic() - rendered:.2f} s")
    finally:
        session.close()

    (pngs,) = results
    assert_pngs(pngs, figures, 600, 300)
    assert len(opened) == 1, "every chart from the one pre-started session"
    assert not _still_running(running)
    session.close()  # idempotent


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_prestarted_browser_closed_unused_leaves_nothing(
    no_browser_env: None, top_countries: pd.DataFrame
) -> None:
    # A run that fails before its report closes the pre-started browser in its `finally`.
    session = charts.prestart()
    assert session.wait_ready(60)
    running = _browser_processes()
    session.close()
    assert running and not _still_running(running)
    # A render after that starts (and closes) a browser of its own.
    pngs = charts.render_pngs({"top": charts.top_countries_chart(top_countries)})
    assert pngs["top"] is not None and pngs["top"].startswith(PNG_MAGIC)
    assert not _still_running(_browser_processes())


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_exit_hook_closes_a_forgotten_browser() -> None:
    pytest.importorskip("psutil")
    code = (
        "import json, psutil\n"
        "from tasks.reporting import charts\n"
        "session = charts.prestart()\n"
        "assert session.wait_ready(60)\n"
        "procs = [p for p in psutil.Process().children(recursive=True)\n"
        "         if 'chrom' in ' '.join(p.cmdline()).lower()]\n"
        "print(json.dumps([[p.pid, p.create_time()] for p in procs]))\n"
        # No close(): the exit hook must stop the browser anyway.
    )
    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k not in charts.BROWSER_ENV_VARS}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    running = {(pid, created) for pid, created in json.loads(done.stdout.strip().splitlines()[-1])}
    assert running
    assert not _still_running(running)


def test_prestart_without_browser_never_raises(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    top_countries: pd.DataFrame,
) -> None:
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    monkeypatch.delenv(charts.ALLOW_DOWNLOAD_ENV, raising=False)
    session = charts.prestart()
    try:
        assert not session.wait_ready(10)
        started = time.monotonic()
        with caplog.at_level("WARNING"):
            pngs = charts.render_pngs({"top": charts.top_countries_chart(top_countries)})
        assert pngs == {"top": None}
        assert time.monotonic() - started < 5
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "BROWSER_PATH" in warnings[0]
    finally:
        session.close()
    session.close()
