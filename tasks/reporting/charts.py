"""Plotly charts for the report, rendered to static PNGs by kaleido (headless Chromium).

Chromium takes ~2 s to start, the charts ~0.2 s each: `prestart()` starts the browser on a
background thread early in a run, and `render_pngs` later renders every chart in that session.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

# Names of the chart images; `tasks.reporting.artifacts.report_markdown` looks images up by these.
CHART_TOP_COUNTRIES = "top-gmail-countries"
CHART_AGE_GROUPS = "gmail-by-age-group"
CHART_HISTORY = "germany-gmail-share-history"

AGE_GROUPS: tuple[str, ...] = (*(f"[{lo}-{lo + 10}]" for lo in range(0, 90, 10)), "[90+]")

# Env names a user may set to point at a browser; the first one set is authoritative.
BROWSER_ENV_VARS = ("BROWSER_PATH", "CHROME_PATH")
# Opt-in: kaleido's `get_chrome_sync()` downloads Chrome for Testing from the internet.
ALLOW_DOWNLOAD_ENV = "CHARTS_ALLOW_BROWSER_DOWNLOAD"
DOWNLOAD_TIMEOUT_SECONDS = 120.0
RENDER_TIMEOUT_SECONDS = 60.0
# Time for kaleido to close (and if need be kill) the browser after the render deadline, and the
# margin on top of both before we stop waiting for the render thread and kill the browser ourselves.
_CLOSE_GRACE_SECONDS = 10.0
_JOIN_MARGIN_SECONDS = 5.0
# How long the exit hook gives each still-open browser to close before killing it.
_EXIT_GRACE_SECONDS = 3.0
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


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    # Inside a flow or task the warning should reach the Prefect UI, elsewhere the module logger.
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            return _log
    except Exception:
        return _log


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


def _label(value: Any) -> str:
    # A count hidden by small-cell suppression arrives as its label (e.g. "<5").
    if isinstance(value, str):
        return value
    return "0" if pd.isna(value) else f"{int(value):,}"


def _heights(values: Any) -> list[int | None]:
    # Hidden counts get no bar: a bar of any height would reveal or misstate them.
    return [None if isinstance(v, str) else int(v) for v in values]


def top_countries_chart(df: pd.DataFrame) -> go.Figure:
    """Bar chart of Gmail users per country for the top-ranked countries (ties share a rank)."""
    data = df.sort_values(["rank", "gmail_users", "country"], ascending=[True, False, True])
    countries = [str(c) for c in data["country"]]
    users = _heights(data["gmail_users"])
    ranks = [int(r) for r in data["rank"]]
    fig = go.Figure(
        go.Bar(
            x=countries,
            y=users,
            text=[f"#{r}: {_label(u)}" for r, u in zip(ranks, data["gmail_users"], strict=True)],
            textposition="outside",
            marker_color=_BAR_COLOR,
            cliponaxis=False,
        )
    )
    # Keep the rank order even when a category name would sort differently.
    fig.update_xaxes(categoryorder="array", categoryarray=countries)
    fig.update_yaxes(rangemode="tozero")
    return _layout(
        fig, "Top countries by Gmail users (ties share a rank)", "Country", "Gmail users"
    )


def age_group_chart(df: pd.DataFrame) -> go.Figure:
    """Bar chart of Gmail users per 10-year age group, every group shown in label order."""
    counts = dict(zip(map(str, df["age_group"]), df["gmail_users"], strict=True))
    # Empty groups are shown as 0 so the x axis is the same from run to run.
    labels = list(AGE_GROUPS) + [g for g in counts if g not in AGE_GROUPS]
    values = [counts.get(g, 0) for g in labels]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=_heights(values),
            text=[_label(v) for v in values],
            textposition="outside",
            marker_color=_BAR_COLOR,
            cliponaxis=False,
        )
    )
    fig.update_xaxes(categoryorder="array", categoryarray=labels)
    fig.update_yaxes(rangemode="tozero")
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
    """All report charts by image name; the history chart only when there are 2+ run dates."""
    figures = {
        CHART_TOP_COUNTRIES: top_countries_chart(top_countries),
        CHART_AGE_GROUPS: age_group_chart(gmail_by_age_group),
    }
    if (history_fig := history_chart(history)) is not None:
        figures[CHART_HISTORY] = history_fig
    return figures


# --- browser --------------------------------------------------------------------------------------


def _executable(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def _download_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _download_chrome(timeout: float) -> str | None:
    """Run kaleido's Chrome download in a daemon thread so a stuck connection can't block us."""
    result: list[str] = []

    def download() -> None:
        try:
            import kaleido

            result.append(str(kaleido.get_chrome_sync()))
        except Exception as exc:  # best effort: any failure means "no browser"
            _log.debug("kaleido.get_chrome_sync() failed: %s", exc)

    # urllib inside get_chrome_sync has no timeout of its own, hence the bounded join.
    thread = threading.Thread(target=download, name="kaleido-get-chrome", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive() or not result:
        return None
    return result[0] if _executable(result[0]) else None


def find_browser(
    *, allow_download: bool | None = None, download_timeout: float = DOWNLOAD_TIMEOUT_SECONDS
) -> str | None:
    """Path of a usable Chrome/Chromium: env, system install, kaleido's own, opt-in download."""
    for var in BROWSER_ENV_VARS:
        if value := os.environ.get(var, "").strip():
            # An explicit setting wins, as it does in choreographer; a wrong one means no charts.
            if _executable(value):
                return value
            _log.debug("%s=%r is not an executable browser", var, value)
            return None

    if _executable("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    for name in ("chromium", "google-chrome", "chrome"):
        if (found := shutil.which(name)) and _executable(found):
            return found

    try:
        from choreographer.browsers.chromium import Chromium

        # Covers kaleido's earlier downloads and the other Chromium-based browsers it knows.
        if (found := Chromium.find_browser(skip_local=False)) and _executable(found):
            return found
    except Exception as exc:
        _log.debug("choreographer browser search failed: %s", exc)

    if allow_download is None:
        allow_download = _download_allowed()
    if allow_download:
        return _download_chrome(download_timeout)
    return None


# --- rendering ------------------------------------------------------------------------------------


def _offline_chromium_cls() -> type:
    from choreographer.browsers.chromium import Chromium

    class OfflineChromium(Chromium):
        """Chromium with network-avoiding flags; choreographer has no extra-args option."""

        def get_cli(self) -> list[str]:
            return [*super().get_cli(), *OFFLINE_CHROMIUM_FLAGS]

    return OfflineChromium


def _terminate_browser(k: Any, wait: float) -> None:
    # choreographer starts the browser in a session of its own behind a wrapper process whose
    # SIGTERM handling takes seconds; killing the whole group stops wrapper and browser at once.
    try:
        proc = getattr(k, "subprocess", None)
        if proc is None or proc.poll() is not None:
            return
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        if wait:
            proc.wait(wait)
    except Exception as exc:
        _log.debug("could not stop the browser process: %s", exc)


def _no_browser_reason(path: str | None) -> str:
    if path is not None:
        return f"{path!r} is not an executable browser"
    for var in BROWSER_ENV_VARS:
        if value := os.environ.get(var, "").strip():
            return f"{var}={value!r} is not an executable browser"
    return "no headless Chrome/Chromium found (install chromium or set BROWSER_PATH)"


def _brief(exc: BaseException) -> str:
    # choreographer packs several sentences into args; one short line is enough for the log.
    text = " ".join(str(a) for a in exc.args) if exc.args else ""
    text = f"{type(exc).__name__}: {text}".strip().rstrip(":")
    return text if len(text) <= 200 else text[:197] + "..."


class _NoBrowserError(RuntimeError):
    """No usable browser executable; the message says why."""


def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
    # What asyncio.run does on the way out: cancel leftovers (kaleido's and choreographer's
    # helpers), then close async generators and the default executor.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class BrowserSession:
    """One kaleido browser on an event loop thread of its own, usable from any thread.

    Chromium starts in the background as soon as the session exists (about 2 s); `render` waits for
    that start if it is still running. `close()` is idempotent, works from any thread, never
    raises, and an exit hook closes whatever is still open when the interpreter exits.
    """

    def __init__(
        self,
        browser: str | None = None,
        timeout: float = RENDER_TIMEOUT_SECONDS,
        *,
        idle_timeout: float | None = None,
    ) -> None:
        # None: find_browser() on the session's thread, so even that stays off the caller's path.
        self.browser = browser
        self.path: str | None = browser
        self.timeout = timeout
        self._kaleido: Any = None
        self._open_task: asyncio.Task[Any] | None = None
        # Settled by the start-up, readable from any thread.
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._claimed = False
        self._closing: concurrent.futures.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=self._run, args=(idle_timeout,), name="kaleido-session", daemon=True
        )
        try:
            self._loop = asyncio.new_event_loop()
            _track(self)
            self._thread.start()
        except Exception as exc:  # no loop or no thread: a session that renders nothing
            _untrack(self)
            if self._loop is not None:
                self._loop.close()
            self._ready.set_exception(exc)

    # -- the session's own thread ------------------------------------------------------------------

    def _run(self, idle_timeout: float | None) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            # Created before the loop runs, so every coroutine submitted later sees it.
            self._open_task = loop.create_task(self._open())
            # A failed start is reported through `_ready` and `render`; don't log it again.
            self._open_task.add_done_callback(_retrieve_exception)
            if idle_timeout is not None:
                loop.call_later(idle_timeout, self._close_if_unclaimed)
            loop.run_forever()
        except BaseException as exc:  # this thread must never raise
            _log.debug("browser session loop failed: %s", _brief(exc))
        finally:
            try:
                _finish_loop(loop)
            except BaseException as exc:
                _log.debug("browser session clean-up failed: %s", _brief(exc))
            finally:
                loop.close()
                asyncio.set_event_loop(None)
                if not self._ready.done():
                    self._ready.set_exception(RuntimeError("browser session ended"))
                _untrack(self)

    async def _open(self) -> Any:
        try:
            path = self.browser if self.browser is not None else find_browser()
            self.path = path
            if path is None or not _executable(path):
                raise _NoBrowserError(_no_browser_reason(path))
            import kaleido

            # mathjax=False: kaleido would otherwise load MathJax from a CDN. Choreographer already
            # starts Chromium with --no-sandbox (enable_sandbox defaults to False), which running as
            # root needs.
            k = kaleido.Kaleido(
                path=path,
                mathjax=False,
                timeout=self.timeout,
                browser_cls=_offline_chromium_cls(),
            )
            self._kaleido = k
            limit = asyncio.timeout(self.timeout)
            try:
                async with limit:
                    await k.open()
            except BaseException:
                # A browser that failed or missed the deadline may never answer kaleido's polite
                # Browser.close; once it is gone, the close is quick. Blocking this loop briefly is
                # fine: it is ours alone.
                _terminate_browser(k, wait=3)
                if limit.expired():
                    raise TimeoutError(f"timed out after {self.timeout:.0f} s") from None
                raise
        except BaseException as exc:
            self._ready.set_exception(
                exc if isinstance(exc, Exception) else RuntimeError("browser start cancelled")
            )
            raise
        self._ready.set_result(None)
        return k

    async def _render(
        self,
        figures: Mapping[str, go.Figure],
        opts: dict[str, Any],
        deadline: float,
        out: dict[str, bytes | None],
        errors: list[str],
    ) -> None:
        assert self._open_task is not None
        limit = asyncio.timeout(deadline)
        try:
            async with limit:
                # Waits for a start still under way; a cancelled wait cancels the start too.
                k = await self._open_task
                for name, fig in figures.items():
                    try:
                        out[name] = await k.calc_fig(fig, opts=opts)
                    except Exception as exc:
                        errors.append(f"{name}: {_brief(exc)}")
        except BaseException:
            self._terminate(wait=3)
            if not limit.expired():
                raise
            # Whatever kaleido raised on cancellation says less than this.
            errors.append(f"timed out after {deadline:.0f} s")

    async def _aclose(self) -> None:
        try:
            task = self._open_task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=_CLOSE_GRACE_SECONDS)
            if (k := self._kaleido) is not None:
                try:
                    async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
                        await k.close()
                except BaseException as exc:
                    _log.debug("kaleido close failed: %s", _brief(exc))
                    _terminate_browser(k, wait=3)
        finally:
            asyncio.get_running_loop().stop()

    def _close_if_unclaimed(self) -> None:
        # Idle safety net for a pre-started browser nobody rendered with nor closed.
        if self._begin_close(unless_claimed=True):
            _log.debug("closed a pre-started browser that was never used")

    # -- any thread --------------------------------------------------------------------------------

    def _submit(self, coro: Any) -> concurrent.futures.Future[Any] | None:
        loop = self._loop
        try:
            if loop is None or loop.is_closed():
                raise RuntimeError("event loop is closed")
            return asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            return None

    def _terminate(self, wait: float) -> None:
        if self._kaleido is not None:
            _terminate_browser(self._kaleido, wait=wait)

    def _claim(self) -> bool:
        # One render per pre-started session; False once it is closing or already taken.
        with self._lock:
            if self._claimed or self._closing is not None:
                return False
            self._claimed = True
            return True

    def wait_ready(self, timeout: float) -> bool:
        """True once the browser is up and running; False if it failed or is not up in time."""
        try:
            self._ready.result(timeout)
        except (Exception, asyncio.CancelledError):
            return False
        proc = getattr(self._kaleido, "subprocess", None)
        return proc is not None and proc.poll() is None

    def render(
        self, figures: Mapping[str, go.Figure], opts: dict[str, Any], timeout: float
    ) -> tuple[dict[str, bytes | None], list[str]]:
        """Render the figures one after another in this session: (PNG or None by name, errors)."""
        out: dict[str, bytes | None] = dict.fromkeys(figures)
        errors: list[str] = []
        future = self._submit(self._render(figures, opts, timeout, out, errors))
        if future is None:
            return dict.fromkeys(figures), ["the browser session is closed"]
        try:
            # Bounded: a browser stuck in kaleido's own close must not hang the run.
            future.result(timeout + _CLOSE_GRACE_SECONDS + _JOIN_MARGIN_SECONDS)
        except TimeoutError:
            future.cancel()
            self._terminate(wait=5)
            return dict.fromkeys(figures), [f"render thread still busy after {timeout:.0f} s"]
        except (Exception, asyncio.CancelledError) as exc:  # reported by the caller
            errors.append(_brief(exc))
        return {name: out.get(name) for name in figures}, list(errors)

    def _begin_close(self, *, unless_claimed: bool = False) -> bool:
        # Under the lock, so a render can't claim a session that is already on its way out.
        with self._lock:
            if self._closing is not None or (unless_claimed and self._claimed):
                return False
            self._closing = self._submit(self._aclose()) or concurrent.futures.Future()
            return True

    def close(self, wait: bool = True) -> None:
        """Close the browser (idempotent, any thread, never raises); wait=False returns at once."""
        try:
            self._begin_close()
            if wait:
                self._join(_CLOSE_GRACE_SECONDS + _JOIN_MARGIN_SECONDS)
        except Exception as exc:
            _log.debug("closing the browser session failed: %s", _brief(exc))

    def _join(self, timeout: float) -> None:
        if self._thread.ident is None or self._thread is threading.current_thread():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Last resort when kaleido's own close is stuck too.
            self._terminate(wait=5)

    def __enter__(self) -> BrowserSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Sessions whose thread is still running, for the exit hook.
_LIVE: set[BrowserSession] = set()
_LIVE_LOCK = threading.Lock()
_EXIT_HOOK: list[bool] = []
# The session prestart() made and render_pngs has not taken yet.
_prestarted: BrowserSession | None = None
_PRESTARTED_LOCK = threading.Lock()


def _track(session: BrowserSession) -> None:
    with _LIVE_LOCK:
        if not _EXIT_HOOK:
            atexit.register(_close_all)
            _EXIT_HOOK.append(True)
        _LIVE.add(session)


def _untrack(session: BrowserSession) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(session)


def _close_all() -> None:
    # choreographer runs Chromium in a session of its own, so it would outlive this process.
    with _LIVE_LOCK:
        sessions = list(_LIVE)
    for session in sessions:
        session.close(wait=False)
    for session in sessions:
        session._join(_EXIT_GRACE_SECONDS)


def prestart(
    *,
    browser: str | None = None,
    timeout: float = RENDER_TIMEOUT_SECONDS,
    idle_timeout: float | None = PRESTART_IDLE_SECONDS,
) -> BrowserSession:
    """Start the chart browser in the background now, for the next `render_pngs`; never raises.

    Returns at once. Close the session in a `finally`: after render_pngs took it, that only waits
    for the background close. A later prestart() replaces (and closes) one that was never used.
    """
    global _prestarted
    session = BrowserSession(browser, timeout, idle_timeout=idle_timeout)
    with _PRESTARTED_LOCK:
        previous, _prestarted = _prestarted, session
    if previous is not None:
        previous.close(wait=False)
    return session


def _take_prestarted(browser: str | None, timeout: float) -> BrowserSession | None:
    """The pre-started session if it fits the call and its browser came up, else None."""
    global _prestarted
    with _PRESTARTED_LOCK:
        session = _prestarted
        if session is None or (browser is not None and session.browser != browser):
            return None
        _prestarted = None
    if not session._claim():
        return None
    if session.wait_ready(timeout):
        return session
    # Start-up failed (or the browser died since): try a fresh session, as without prestart.
    _log.debug("pre-started browser unusable; starting a new one")
    session.close(wait=False)
    return None


def render_pngs(
    figures: Mapping[str, go.Figure],
    width: int = 900,
    height: int = 450,
    scale: float = 1,
    *,
    browser: str | None = None,
    timeout: float = RENDER_TIMEOUT_SECONDS,
) -> dict[str, bytes | None]:
    """PNG bytes per figure name, all from one browser session; None where it can't render.

    Uses the browser `prestart()` started if there is one (and closes it in the background),
    otherwise starts one now and closes it before returning. Never raises.
    """
    out: dict[str, bytes | None] = dict.fromkeys(figures)
    if not figures:
        return out
    started = time.monotonic()
    opts = {"format": "png", "width": width, "height": height, "scale": scale}
    session = _take_prestarted(browser, timeout)
    prestarted = session is not None
    if session is None:
        path = browser if browser is not None else find_browser()
        if path is None or not _executable(path):
            _logger().warning("Charts not rendered: %s.", _no_browser_reason(path))
            return out
        session = BrowserSession(path, timeout)
    try:
        result, errors = session.render(figures, opts, timeout)
    finally:
        # A pre-started session's owner (or the exit hook) waits for the close; ours we wait for.
        session.close(wait=not prestarted)

    if errors or any(png is None for png in result.values()):
        missing = [name for name, png in result.items() if png is None]
        _logger().warning(
            "Charts not rendered with %s (%s): %s",
            session.path,
            ", ".join(missing),
            "; ".join(errors) or "no image returned",
        )
    else:
        _log.debug(
            "rendered %d charts in %.1f s (%s browser)",
            len(result),
            time.monotonic() - started,
            "pre-started" if prestarted else "new",
        )
    return result
