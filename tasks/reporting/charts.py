"""Plotly charts for the report, rendered to static PNGs by kaleido (headless Chromium).

Chromium is slow to start and each chart quick to render in it: `prestart()` opens one
`kaleido.Kaleido` (one browser) early in a run, and `render_pngs` later renders every chart in it,
then closes it. kaleido's sync server (`start_sync_server`) is not used: its calls wait without
limit, even on a browser that failed to start, and it gives no handle on the browser to kill.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import html
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import plotly.graph_objects as go

from tasks.common.logs import run_logger
from tasks.common.reports import CHART_AGE_GROUPS, CHART_HISTORY, CHART_TOP_COUNTRIES
from tasks.common.run_config import ChartBrowserConfig
from tasks.common.schemas import AGE_GROUPS
from tasks.common.secrets import without_key
from tasks.common.tempdirs import make_temp_dir

# kaleido's `get_chrome_sync()` (ChartBrowserConfig.allow_download) has no timeout of its own.
DOWNLOAD_TIMEOUT_SECONDS = 120.0
RENDER_TIMEOUT_SECONDS = 60.0
# How long kaleido may take to close its browser before we kill it (at exit: less), and how long
# the stop may take after the kill.
_CLOSE_GRACE_SECONDS = 10.0
_EXIT_GRACE_SECONDS = 3.0
_KILLED_GRACE_SECONDS = 5.0
# A pre-started browser that is neither used nor closed by then closes itself.
PRESTART_IDLE_SECONDS = 1800.0

# Chromium stalls on a closed network (DNS/connect attempts that are dropped, not refused). The
# render page only loads file:// scripts (plotly.js from the plotly package, mathjax off), so every
# host lookup is made to fail at once and the background services that phone home are off.
OFFLINE_CHROMIUM_FLAGS: tuple[str, ...] = (
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--disable-background-networking",
    "--disable-client-side-phishing-detection",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-features=Translate,MediaRouter,OptimizationHints,CertificateTransparencyComponentUpdater",
    "--no-pings",
    "--dns-prefetch-disable",
)

_TEMPLATE = "plotly_white"
_BAR_COLOR = "#3366cc"

_log = logging.getLogger(__name__)
T = TypeVar("T")


# --- chart builders -------------------------------------------------------------------------------


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.5, "xanchor": "center"},
        xaxis_title=x_title,
        yaxis_title=y_title,
        template=_TEMPLATE,
        showlegend=False,
        margin={"l": 70, "r": 30, "t": 70, "b": 70},
    )
    return fig


def _data_label(value: Any) -> str:
    # Plotly reads a subset of HTML in any text (<a href>, <b>, <br>, entities): a label taken
    # from the data is escaped, so that it is shown as written and never as markup.
    return html.escape(str(value), quote=False)


def _label(value: Any) -> str:
    # A count hidden by small-cell suppression arrives as its label (e.g. "<5" or "x").
    if isinstance(value, str):
        return value
    return "0" if pd.isna(value) else f"{int(value):,}"


def _bar_chart(labels: list[str], values: list[Any], text: list[str]) -> go.Figure:
    # Hidden counts get no bar: a bar of any height would reveal or misstate them.
    heights = [None if isinstance(v, str) else int(v) for v in values]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=heights,
            text=text,
            textposition="outside",
            marker_color=_BAR_COLOR,
            cliponaxis=False,
        )
    )
    # Keep the given order even when a category name would sort differently.
    fig.update_xaxes(categoryorder="array", categoryarray=labels)
    fig.update_yaxes(rangemode="tozero")
    return fig


def top_countries_chart(df: pd.DataFrame) -> go.Figure:
    """Bar chart of Gmail users per country for the top-ranked countries (ties share a rank)."""
    # Countries of one rank share their count (dense rank); a hidden count is a label, not a
    # number, so the count is no sort key.
    data = df.sort_values(["rank", "country"])
    users = list(data["gmail_users"])
    text = [f"#{int(r)}: {_label(u)}" for r, u in zip(data["rank"], users, strict=True)]
    fig = _bar_chart([_data_label(c) for c in data["country"]], users, text)
    return _layout(
        fig, "Top countries by Gmail users (ties share a rank)", "Country", "Gmail users"
    )


def age_group_chart(df: pd.DataFrame) -> go.Figure:
    """Bar chart of Gmail users per 10-year age group, every group shown in label order."""
    counts = dict(zip(map(str, df["age_group"]), df["gmail_users"], strict=True))
    # Empty groups are shown as 0 so the x axis is the same from run to run.
    labels = list(AGE_GROUPS) + [g for g in counts if g not in AGE_GROUPS]
    values = [counts.get(g, 0) for g in labels]
    fig = _bar_chart([_data_label(g) for g in labels], values, [_label(v) for v in values])
    return _layout(fig, "Gmail users by age group", "Age group (years)", "Gmail users")


def history_chart(df: pd.DataFrame) -> go.Figure | None:
    """Line chart of the Gmail share among German users per run date; None below 2 dates."""
    if len(df) < 2:
        return None
    data = df.assign(run_date=pd.to_datetime(df["run_date"]))
    data = data.drop_duplicates("run_date", keep="last").sort_values("run_date")
    if len(data) < 2:
        return None
    # Small-cell suppression may have replaced a share with a label: no point, a gap.
    shares = [
        None if pd.isna(s) else float(s)
        for s in pd.to_numeric(data["gmail_share_pct"], errors="coerce")
    ]
    german = [_label(n) for n in data["german_users"]]
    fig = go.Figure(
        go.Scatter(
            x=[d.date().isoformat() for d in data["run_date"]],
            y=shares,
            mode="lines+markers+text",
            # The share alone hides how many German users it rests on.
            text=[
                None if s is None else f"{s:.1f} % of {n}"
                for s, n in zip(shares, german, strict=True)
            ],
            textposition="top center",
            line={"color": _BAR_COLOR},
            # A run without German users has no share; leave a gap rather than draw through it.
            connectgaps=False,
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(rangemode="tozero", ticksuffix=" %")
    return _layout(
        fig, "Gmail share among users in Germany, per run", "Run date", "Gmail share (%)"
    )


def build_charts(
    top_countries: pd.DataFrame, gmail_by_age_group: pd.DataFrame, history: pd.DataFrame
) -> dict[str, go.Figure]:
    """All report charts by image name (the names the report registry gives each report's
    charts); the history chart only when there are 2+ run dates."""
    figures = {
        CHART_TOP_COUNTRIES: top_countries_chart(top_countries),
        CHART_AGE_GROUPS: age_group_chart(gmail_by_age_group),
    }
    if (history_fig := history_chart(history)) is not None:
        figures[CHART_HISTORY] = history_fig
    return figures


# --- finding the browser --------------------------------------------------------------------------


def _executable(path: str | None) -> bool:
    return bool(path) and Path(str(path)).is_file() and os.access(str(path), os.X_OK)


def _download_chrome(timeout: float) -> str | None:
    """kaleido's Chrome download, given up after `timeout` s (its urllib call has no timeout)."""
    result: list[str] = []

    def download() -> None:
        try:
            import kaleido

            result.append(str(kaleido.get_chrome_sync()))
        except Exception as exc:  # best effort: any failure means "no browser"
            _log.debug("kaleido.get_chrome_sync() failed: %s", exc)

    thread = threading.Thread(target=download, name="kaleido-get-chrome", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result and _executable(result[0]) else None


def find_browser(
    config: ChartBrowserConfig | None = None,
    *,
    download_timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> str | None:
    """Path of a usable Chrome/Chromium: the configured one, installed, kaleido's, a download."""
    config = config or ChartBrowserConfig()
    if config.path is not None:
        # An explicit setting wins, as it does in choreographer; a wrong one means no charts.
        setting = str(config.path)
        return setting if _executable(setting) else None
    # kaleido prefers Chrome to the system's Chromium and never downloads.
    found = ["/usr/bin/chromium", *map(shutil.which, ("chromium", "google-chrome", "chrome"))]
    try:
        from choreographer.browsers import Chromium

        # kaleido's earlier downloads and the other Chromium-based browsers choreographer knows.
        found.append(Chromium.find_browser(skip_local=False))
    except Exception as exc:  # best effort, like the rest of the search
        _log.debug("choreographer's browser search failed: %s", exc)
    if path := next(filter(_executable, found), None):
        return path
    return _download_chrome(download_timeout) if config.allow_download else None


def _no_browser_reason(path: str | None, config: ChartBrowserConfig) -> str:
    if path is not None:
        return f"{path!r} is not an executable browser"
    if config.path is not None:
        return f"BROWSER_PATH={str(config.path)!r} is not an executable browser"
    return "no headless Chrome/Chromium found (install chromium or set BROWSER_PATH)"


def _brief(exc: BaseException) -> str:
    # choreographer packs several sentences into args; one short line is enough for the log.
    text = f"{type(exc).__name__}: {' '.join(map(str, exc.args))}".strip().rstrip(":")
    return text if len(text) <= 200 else text[:197] + "..."


# --- the chart browser: one kaleido.Kaleido on an event loop of its own ---------------------------

# choreographer's pipe reader logs this, with a traceback, when a read cut a message short (seen
# while the browser closes at exit on a busy machine), and then ignores the message itself.
_CHOREOGRAPHER_IGNORED = "JSONError decoding message. Ignoring"
_PIPE_LOGGER = "choreographer.channels.pipe"


def _not_ignored(record: logging.LogRecord) -> bool:
    return _CHOREOGRAPHER_IGNORED not in record.getMessage()


def _quiet_choreographer() -> None:
    """Drop the one error choreographer logs and ignores: a traceback reaches no user for it.

    Called once choreographer is imported, so that the logger is already logistro's (creating
    it first here would give choreographer a plain Logger without logistro's extra levels).
    Any other record of that logger still passes.
    """
    logger = logging.getLogger(_PIPE_LOGGER)
    if _not_ignored not in logger.filters:
        logger.addFilter(_not_ignored)


@functools.cache
def offline_chromium() -> type[Any]:
    """choreographer's `Chromium` with the offline flags and an environment without the key.

    Pinned exception (README, "Library internals we still use"): choreographer has no option for
    extra Chromium flags or for the browser's environment, so its `Chromium` is subclassed and
    handed to kaleido as `browser_cls` (a documented `Kaleido`/`Browser` argument), extending
    `get_cli` and `get_env`. Tested with choreographer 1.4 (range >=1.4,<1.5);
    tests/tasks/reporting/test_charts.py fails when either hook no longer reaches Chromium.
    """
    from choreographer.browsers import Chromium

    class OfflineChromium(Chromium):
        def get_cli(self) -> list[str]:
            return [*super().get_cli(), *OFFLINE_CHROMIUM_FLAGS]

        def get_env(self) -> MutableMapping[str, str]:
            # The CLI and a deployment's flow run withhold the key before Chromium starts; a
            # flow run inside someone else's process leaves its environment as it is, and the
            # browser must not hold the key there either.
            return without_key(super().get_env())

    return OfflineChromium


class _BrowserGone(RuntimeError):
    """The chart browser renders no more: it failed, died or missed the deadline."""


async def _set_within(event: asyncio.Event, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class ChartBrowser:
    """One kaleido `Kaleido` (one Chromium for every chart) on an event loop of its own thread.

    That thread finds the browser, opens it, waits for `close()` (or, if no render took the
    browser, the idle timeout) and closes it. A new ChartBrowser closes the previous one first,
    so that at most one is left for the exit hook to close.
    """

    def __init__(
        self,
        browser: str | None,
        timeout: float,
        idle: float | None = None,
        config: ChartBrowserConfig | None = None,
    ) -> None:
        global _current
        self.browser, self.timeout, self.taken = browser, timeout, False
        self.config = config or ChartBrowserConfig()  # how to find one when `browser` is None
        self.path: str | None = None
        self.temp_dir: Path | None = None  # the profile's and the page's folder, removed at close
        self.kaleido: Any = None  # the kaleido.Kaleido, from before it opens
        self.loop: asyncio.AbstractEventLoop | None = None  # the thread's, which runs kaleido
        self.error: BaseException | None = None  # what opening it failed with
        self.started, self.stopping = threading.Event(), threading.Event()
        self._stop: asyncio.Event | None = None
        with _LOCK:
            self.previous, _current = _current, self
        # Started now rather than in close(): Python 3.12+ starts no threads in exit hooks.
        self.thread = threading.Thread(target=self._run, args=(idle,), name="chart-browser")
        self.thread.daemon = True
        self.thread.start()

    def _run(self, idle: float | None) -> None:
        try:
            # Finding the browser (even downloading it) happens here too, off the caller's path.
            self.path = self.browser if self.browser is not None else find_browser(self.config)
            previous, self.previous = self.previous, None  # not a chain of every one ever made
            if previous is not None:
                previous.close()
            if _executable(self.path):
                asyncio.run(self._serve(idle))
        except Exception as exc:
            self.error = exc
        finally:
            self.started.set()
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    async def _serve(self, idle: float | None) -> None:
        import kaleido

        _quiet_choreographer()
        self._stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        if self.stopping.is_set():  # closed before it opened
            return
        # mathjax=False: kaleido would load MathJax from a CDN. choreographer already runs Chromium
        # with --no-sandbox, which running as root needs.
        options: dict[str, Any] = {"mathjax": False}
        if "snap" not in str(self.path):  # a snap's Chromium cannot see /tmp: kaleido's own place
            # The profile and kaleido's page go in one folder named for this process, so that a
            # check removes it once the process is gone, even killed (tasks/common/tempdirs.py).
            self.temp_dir = make_temp_dir("charts")
            page = self.temp_dir / "index.html"
            page.write_text(kaleido.PageGenerator(mathjax=False).generate_index(), "utf-8")
            options = {"page_generator": str(page), "tmp_dir": str(self.temp_dir)}
        self.kaleido = kaleido.Kaleido(
            path=self.path, timeout=self.timeout, browser_cls=offline_chromium(), **options
        )
        try:
            await self.kaleido.open()
            self.started.set()
            while not await _set_within(self._stop, idle) and not self.take():
                idle = None  # taken by a render: wait for its close, however long
        finally:
            try:
                await self.kaleido.close()
            except Exception as exc:  # close() kills it then; kill() is the last resort
                _log.debug("closing the chart browser failed: %s", exc)
                self.kill()

    def take(self) -> bool:
        """Claim the browser for one render (False once taken or closing)."""
        with _LOCK:
            taken, self.taken = self.taken or self.stopping.is_set(), True
        return not taken

    def call(self, deadline: float, method: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """What `method(kaleido)` returns, awaited on the browser's loop; _BrowserGone past
        `deadline`, or once the browser failed or closed."""
        self.started.wait(max(0.0, deadline - time.monotonic()))
        if not self.started.is_set():
            raise _BrowserGone(f"timed out after {self.timeout:.0f} s")
        loop = self.loop
        if self.error is not None or loop is None or not self.thread.is_alive():
            raise _BrowserGone(_brief(self.error) if self.error else "no browser running")
        coroutine = method(self.kaleido)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # its loop has ended meanwhile
            coroutine.close()
            raise _BrowserGone("the browser has closed") from None
        # Wait for the answer, the end of the browser's thread or the deadline.
        while not concurrent.futures.wait([future], timeout=0.05).done:
            if not self.thread.is_alive():
                raise _BrowserGone(_brief(self.error) if self.error else "the browser has closed")
            if time.monotonic() > deadline:
                future.cancel()
                raise _BrowserGone(f"timed out after {self.timeout:.0f} s")
        if future.cancelled():
            raise _BrowserGone("the browser has closed")
        return future.result()

    def wait_ready(self, timeout: float) -> bool:
        """True once the browser answers; False if it is missing, failed or not up in time."""
        deadline = time.monotonic() + timeout
        try:
            reply = self.call(deadline, lambda browser: browser.send_command("Browser.getVersion"))
        except Exception:
            return False
        return "error" not in reply

    def kill(self) -> None:
        """SIGKILL the browser's process group: a hung browser ignores kaleido's polite close."""
        # choreographer starts Chromium in a session of its own, so it would outlive us; its
        # `Browser.subprocess` leads that group until it is reaped.
        process = getattr(self.kaleido, "subprocess", None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):  # gone meanwhile
            group = os.getpgid(process.pid)
            if group != os.getpgrp():  # never our own, however it got there
                os.killpg(group, signal.SIGKILL)
            else:
                process.kill()

    def close(self, wait: bool = True, grace: float = _CLOSE_GRACE_SECONDS) -> None:
        """Stop the browser (idempotent, any thread, never raises); wait=False returns at once."""
        self.stopping.set()
        if (loop := self.loop) is not None and (stop := self._stop) is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended
                loop.call_soon_threadsafe(stop.set)
        if wait and self.thread is not threading.current_thread():
            self.thread.join(grace)
            if self.thread.is_alive():  # kaleido's close waits without limit for a hung browser
                self.kill()
                self.thread.join(_KILLED_GRACE_SECONDS)

    def __enter__(self) -> ChartBrowser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_LOCK = threading.Lock()
_current: ChartBrowser | None = None  # the newest; the only one whose browser may be running


@atexit.register
def _close_at_exit() -> None:
    if (chart_browser := _current) is not None:
        chart_browser.close(grace=_EXIT_GRACE_SECONDS)


def prestart(
    config: ChartBrowserConfig | None = None,
    *,
    browser: str | None = None,
    timeout: float = RENDER_TIMEOUT_SECONDS,
    idle_timeout: float | None = PRESTART_IDLE_SECONDS,
) -> ChartBrowser:
    """Start the chart browser in the background for the next `render_pngs`; never raises.

    Returns at once; close it in a `finally` or use it as a context manager. `config` says how
    to find the browser when `browser` is None (default: searched, never downloaded).
    """
    return ChartBrowser(browser, timeout, idle_timeout, config)


def render_pngs(
    figures: Mapping[str, go.Figure],
    width: int = 900,
    height: int = 450,
    scale: float = 1,
    *,
    browser: str | None = None,
    timeout: float = RENDER_TIMEOUT_SECONDS,
    config: ChartBrowserConfig | None = None,
) -> dict[str, bytes | None]:
    """PNG bytes per figure name, all from one browser; None where it can't render. Never raises.

    Uses (and stops, in the background) the browser `prestart()` started if it answers,
    otherwise starts one now (found as `config` says) and stops it before returning.
    """
    config = config or ChartBrowserConfig()
    out: dict[str, bytes | None] = dict.fromkeys(figures)
    if not figures:
        return out
    chart_browser = _current
    prestarted = (
        chart_browser is not None
        and browser in (None, chart_browser.browser)
        and chart_browser.take()
        and chart_browser.wait_ready(timeout)
    )
    if chart_browser is None or not prestarted:  # none, or it failed: a new one stops it
        path = browser if browser is not None else find_browser(config)
        if not _executable(path):
            reason = _no_browser_reason(path, config)
            run_logger(__name__).warning("Charts not rendered: %s.", reason)
            return out
        chart_browser = ChartBrowser(path, timeout)
    opts = {"format": "png", "width": width, "height": height, "scale": scale}
    deadline, errors = time.monotonic() + timeout, []
    try:
        for name, fig in figures.items():

            def render(kaleido: Any, fig: go.Figure = fig) -> Coroutine[Any, Any, bytes]:
                return kaleido.calc_fig(fig, opts=opts)  # type: ignore[no-any-return]

            try:
                out[name] = chart_browser.call(deadline, render)
            except _BrowserGone as exc:
                errors.append(str(exc))
                chart_browser.kill()  # past the deadline it may be hung: don't wait to stop it
                break
            except Exception as exc:
                errors.append(f"{name}: {_brief(exc)}")
    finally:
        # A pre-started browser's owner (or the exit hook) waits for its stop; ours we wait for.
        chart_browser.close(wait=not prestarted)
    if errors or None in out.values():
        missing = ", ".join(name for name, png in out.items() if png is None)
        why = "; ".join(errors) or "no image returned"
        run_logger(__name__).warning(
            "Charts not rendered with %s (%s): %s", chart_browser.path, missing, why
        )
    return out
