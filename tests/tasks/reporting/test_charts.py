"""Chart builders, browser discovery and PNG rendering in one real Chromium (one kaleido.Kaleido).

No wall-clock assertions here: `make bench` reports `seconds charts` per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import psutil
import pytest

from tasks.common.run_config import ChartBrowserConfig
from tasks.common.schemas import AGE_GROUPS
from tasks.common.settings import Settings, get_settings
from tasks.reporting import charts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


@pytest.fixture
def figures(
    top_countries: pd.DataFrame, age_groups: pd.DataFrame, history: pd.DataFrame
) -> dict[str, go.Figure]:
    """All three report charts."""
    return charts.build_charts(top_countries, age_groups, history)


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
    assert list(bar.x) == list(AGE_GROUPS)
    expected = dict.fromkeys(AGE_GROUPS, 0) | {"[0-10]": 3, "[60-70]": 5, "[90+]": 7}
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


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set (None: unset) environment variables, then have the settings read them again."""

    def set_env(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


def test_find_browser_prefers_the_setting(set_env: Callable[..., None], tmp_path: Path) -> None:
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert charts.find_browser(ChartBrowserConfig(path=fake)) == str(fake)
    # The run's configuration decides, never the environment the run happens to see.
    set_env(BROWSER_PATH="/nonexistent/chrome")
    assert charts.find_browser(ChartBrowserConfig(path=fake)) == str(fake)


def test_find_browser_wrong_setting_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import kaleido

    # Not even a download that would succeed replaces a wrong explicit setting.
    monkeypatch.setattr(kaleido, "get_chrome_sync", lambda: sys.executable)
    wrong = ChartBrowserConfig(path=Path("/nonexistent/chrome"), allow_download=True)
    assert charts.find_browser(wrong) is None


def test_browser_settings_are_typed(set_env: Callable[..., None]) -> None:
    set_env(BROWSER_PATH="  ", CHARTS_ALLOW_BROWSER_DOWNLOAD="yes")
    settings = Settings(_env_file=None)
    assert settings.browser_path is None  # blank is unset, not the working directory
    assert settings.charts_allow_browser_download is True
    # A value that is no yes/no is refused, never read as "no".
    set_env(CHARTS_ALLOW_BROWSER_DOWNLOAD="maybe")
    with pytest.raises(ValueError, match="charts_allow_browser_download"):
        Settings(_env_file=None)


def test_the_download_opt_in_is_read_from_the_config(
    set_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kaleido

    # No browser anywhere on this machine (as far as the search can tell): only the opt-in decides.
    monkeypatch.setattr(charts, "_executable", lambda path: path == sys.executable)
    downloads: list[bool] = []
    monkeypatch.setattr(
        kaleido, "get_chrome_sync", lambda: downloads.append(True) or sys.executable
    )
    # An opt-in in the environment alone is not the run's configuration.
    set_env(BROWSER_PATH=None, CHARTS_ALLOW_BROWSER_DOWNLOAD="1")
    assert charts.find_browser() is None and downloads == []
    assert charts.find_browser(ChartBrowserConfig()) is None and downloads == []
    allowed = ChartBrowserConfig(allow_download=True)
    assert charts.find_browser(allowed) == sys.executable and downloads == [True]


def test_find_browser_download_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import kaleido

    # A download that hangs until released, then "succeeds": only giving up on it returns None.
    release = threading.Event()

    def stuck_download() -> str:
        release.wait(60)
        return sys.executable

    monkeypatch.setattr(kaleido, "get_chrome_sync", stuck_download)
    try:
        assert charts._download_chrome(timeout=0.5) is None
    finally:
        release.set()


@pytest.fixture
def chromium() -> str:
    """The browser the rendering tests need; they fail, never skip, without it."""
    path = charts.find_browser(ChartBrowserConfig(path=get_settings().browser_path))
    if path is None:
        pytest.fail(
            "these tests render in a real Chromium and none was found: install Debian's "
            "`chromium` (apt-get install chromium) or set BROWSER_PATH to a Chrome/Chromium"
        )
    return path


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


def _processes(marker: str) -> set[tuple[int, float]]:
    """(pid, start time) of every process below this one whose command line holds `marker`."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()).lower():
                found.add((proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return found


def _still_running(processes: set[tuple[int, float]], wait: float = 10.0) -> set[int]:
    """The pids that still run after up to `wait` s; helpers left orphaned count too."""
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


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings the charts module logged (choreographer's own are not ours to count)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and r.name == charts.__name__
    ]


@pytest.mark.slow
def test_render_pngs_with_chromium_one_session(
    chromium: str, opened: list[object], figures: dict[str, go.Figure]
) -> None:
    pngs = charts.render_pngs(figures, width=600, height=300, browser=chromium)
    assert_pngs(pngs, figures, 600, 300)
    assert len(opened) == 1, "every chart from one browser session"
    assert not _still_running(_processes("chrom")), "render_pngs stops the browser it started"


@pytest.fixture
def no_browser() -> ChartBrowserConfig:
    """A browser setting that points nowhere, and no download to fall back on."""
    return ChartBrowserConfig(path=Path("/nonexistent/chrome"))


def test_render_pngs_without_browser_returns_none(
    no_browser: ChartBrowserConfig,
    caplog: pytest.LogCaptureFixture,
    top_countries: pd.DataFrame,
    age_groups: pd.DataFrame,
) -> None:
    figures = charts.build_charts(top_countries, age_groups, pd.DataFrame())
    with caplog.at_level("WARNING"):
        pngs = charts.render_pngs(figures, config=no_browser)
    assert pngs == dict.fromkeys(figures)
    (warning,) = _warnings(caplog)
    assert "not rendered" in warning and "BROWSER_PATH='/nonexistent/chrome'" in warning


def test_render_pngs_with_broken_browser_returns_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, top_countries: pd.DataFrame
) -> None:
    # An executable that is not a browser: kaleido fails to talk to it, we must not raise.
    broken = tmp_path / "not-a-browser"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    with caplog.at_level("WARNING"):
        pngs = charts.render_pngs(
            {"top": charts.top_countries_chart(top_countries)}, browser=str(broken), timeout=10
        )
    assert pngs == {"top": None}
    # kaleido failed to open it: the reason is in the one warning, not a traceback.
    (warning,) = _warnings(caplog)
    assert "BrowserFailedError" in warning


def test_render_pngs_no_figures() -> None:
    assert charts.render_pngs({}) == {}


@pytest.mark.slow
def test_render_pngs_with_stuck_browser_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, top_countries: pd.DataFrame
) -> None:
    # Starts and then never speaks the DevTools protocol: the deadline must end it, and it must
    # be killed, since kaleido would wait for it without limit. $0 marks its command line.
    stuck = tmp_path / "stuck-browser"
    stuck.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import time; time.sleep(120)" "$0"\n')
    stuck.chmod(0o755)
    found: set[tuple[int, float]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            found.update(_processes(str(stuck).lower()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with caplog.at_level("WARNING"):
            pngs = charts.render_pngs(
                {"top": charts.top_countries_chart(top_countries)}, browser=str(stuck), timeout=2
            )
    finally:
        done.set()
        watcher.join()
    assert pngs == {"top": None}
    (warning,) = _warnings(caplog)
    assert "timed out" in warning
    assert found, "the stuck browser should have been started"
    assert not _still_running(found)


# --- pre-started browser ------------------------------------------------------------------------


@pytest.mark.slow
def test_prestart_then_render_from_another_thread(
    chromium: str,
    monkeypatch: pytest.MonkeyPatch,
    opened: list[object],
    figures: dict[str, go.Figure],
) -> None:
    # prestart() returns while the browser is still being found, which happens on another thread.
    release, searched_on = threading.Event(), []

    def slow_find_browser(*_: object, **__: object) -> str:
        searched_on.append(threading.current_thread())
        release.wait(60)
        return chromium

    monkeypatch.setattr(charts, "find_browser", slow_find_browser)
    session = charts.prestart()
    try:
        release.set()
        assert session.wait_ready(60)
        assert searched_on and searched_on[0] is not threading.current_thread()
        running = _processes("chrom")
        assert running, "the pre-started browser should be running"
        results: list[dict[str, bytes | None]] = []
        # The flow renders in a task thread, not the thread that pre-started the browser.
        worker = threading.Thread(
            target=lambda: results.append(charts.render_pngs(figures, width=600, height=300))
        )
        worker.start()
        worker.join(60)
    finally:
        session.close()

    (pngs,) = results
    assert_pngs(pngs, figures, 600, 300)
    assert len(opened) == 1, "every chart from the one pre-started session"
    assert not _still_running(running)
    session.close()  # idempotent


def test_the_error_choreographer_ignores_prints_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # choreographer logs a message a read cut short (while the browser closes at exit) with a
    # traceback, then ignores the message; other records of its pipe logger still pass.
    import logging

    from choreographer.channels import pipe

    charts._quiet_choreographer()
    charts._quiet_choreographer()  # idempotent
    logger = logging.getLogger(charts._PIPE_LOGGER)
    assert logger is pipe._logger
    assert logger.filters.count(charts._not_ignored) == 1
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("a cut message")
        except ValueError:
            logger.exception("JSONError decoding message. Ignoring")
        logger.error("Error in trying to decode JSON off our read.")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Ignoring" not in err
    assert "Error in trying to decode JSON" in err


@pytest.mark.slow
def test_chromium_runs_offline_and_never_holds_the_key(
    chromium: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the flow runs inside someone else's process, that process's environment may hold the
    # key (the CLI and a deployment's flow run withhold it first): the browser still gets none.
    # Both this and the offline flags reach Chromium through the pinned choreographer hooks.
    monkeypatch.setenv("PII_HASH_KEY", "a-key-chromium-must-never-hold-0123")
    monkeypatch.setenv("CHART_TEST_MARKER", "inherited")
    with charts.prestart(browser=chromium) as session:
        assert session.wait_ready(60)
        environs, cmdlines = [], []
        for pid, _ in _processes("chrom"):
            with contextlib.suppress(psutil.Error, FileNotFoundError):
                environs.append(Path(f"/proc/{pid}/environ").read_bytes())
                cmdlines.append(psutil.Process(pid).cmdline())
    assert environs, "no Chromium process found"
    assert any(b"CHART_TEST_MARKER=inherited" in env for env in environs)  # the reading works
    assert not any(b"PII_HASH_KEY" in env for env in environs)
    # The browser process itself (not choreographer's wrapper, nor Chromium's helper processes,
    # which get flags of their own) runs with every offline flag.
    browsers = [
        c
        for c in cmdlines
        if c and "python" not in c[0] and "--remote-debugging-pipe" in c
        if not any(arg.startswith("--type=") for arg in c)
    ]
    assert browsers, cmdlines
    assert all(set(charts.OFFLINE_CHROMIUM_FLAGS) <= set(c) for c in browsers)


def test_the_pinned_choreographer_hooks_still_reach_the_browser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one library internal the charts rely on (README, "Library internals we still use")."""
    import inspect

    from choreographer import Browser
    from choreographer.browsers import Chromium
    from choreographer.channels import Pipe

    # kaleido hands `browser_cls` to choreographer's Browser, which builds the browser with it.
    assert "browser_cls" in inspect.signature(Browser.__init__).parameters
    offline = charts.offline_chromium()
    assert issubclass(offline, Chromium)
    monkeypatch.setenv("PII_HASH_KEY", "a-key-chromium-must-never-hold-0123")
    pipe = Pipe()
    try:
        browser = offline(pipe, path=sys.executable)  # built, never started
        browser.pre_open()
        cli, env = list(browser.get_cli()), browser.get_env()
        browser.clean()
    finally:
        pipe.close()
    # choreographer's own flags are still there, ours after them; its environment without the key.
    assert "--remote-debugging-pipe" in cli and "--no-sandbox" in cli
    assert cli[-len(charts.OFFLINE_CHROMIUM_FLAGS) :] == list(charts.OFFLINE_CHROMIUM_FLAGS)
    assert "PII_HASH_KEY" not in env and env.get("PATH") == os.environ.get("PATH")


@pytest.mark.slow
def test_prestarted_browser_closed_unused_leaves_nothing(
    chromium: str, opened: list[object], top_countries: pd.DataFrame
) -> None:
    # A run that fails before its report closes the pre-started browser in its `finally`.
    with charts.prestart(browser=chromium) as session:
        assert session.wait_ready(60)
        running = _processes("chrom")
    assert running and not _still_running(running)
    # A render after that starts (and stops) a browser of its own.
    pngs = charts.render_pngs({"top": charts.top_countries_chart(top_countries)}, browser=chromium)
    assert pngs["top"] is not None and pngs["top"].startswith(PNG_MAGIC)
    assert len(opened) == 2
    assert not _still_running(_processes("chrom"))


@pytest.mark.slow
def test_prestarted_browser_nobody_uses_closes_when_idle(chromium: str) -> None:
    session = charts.prestart(browser=chromium, idle_timeout=8)
    try:
        assert session.wait_ready(60)
        running = _processes("chrom")
        session.thread.join(60)  # ends once the idle timeout has stopped kaleido's server
        assert not session.thread.is_alive()
        assert running and not _still_running(running)
        assert not session.take(), "an idle-closed browser is no one's to render with"
    finally:
        session.close()


@pytest.mark.slow
def test_exit_hook_closes_a_forgotten_browser(chromium: str) -> None:
    code = (
        "import json, psutil\n"
        "from tasks.common.run_config import chart_browser_config\n"
        "from tasks.common.settings import get_settings\n"
        "from tasks.reporting import charts\n"
        "session = charts.prestart(chart_browser_config(get_settings()))\n"
        "assert session.wait_ready(60)\n"
        "procs = [p for p in psutil.Process().children(recursive=True)\n"
        "         if 'chrom' in ' '.join(p.cmdline()).lower()]\n"
        "print(json.dumps([[p.pid, p.create_time()] for p in procs]))\n"
        # No close(): the exit hook must stop the browser anyway.
    )
    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k != "BROWSER_PATH"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env | {"BROWSER_PATH": chromium},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    running = {(pid, created) for pid, created in json.loads(done.stdout.strip().splitlines()[-1])}
    assert running
    assert not _still_running(running)
    assert "Traceback" not in done.stderr


def test_prestart_without_browser_never_raises(
    no_browser: ChartBrowserConfig, caplog: pytest.LogCaptureFixture, top_countries: pd.DataFrame
) -> None:
    session = charts.prestart(no_browser)
    try:
        assert not session.wait_ready(10)
        with caplog.at_level("WARNING"):
            top = {"top": charts.top_countries_chart(top_countries)}
            pngs = charts.render_pngs(top, config=no_browser)
        assert pngs == {"top": None}
        (warning,) = _warnings(caplog)
        assert "BROWSER_PATH" in warning
    finally:
        session.close()
    session.close()
