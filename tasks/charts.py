"""Plotly charts for the report, rendered to static PNGs by kaleido (headless Chromium)."""

from __future__ import annotations

import asyncio
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

# Names of the chart images; `tasks.publish.report_markdown` looks images up by these.
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


async def _render_all(
    browser: str,
    figures: Mapping[str, go.Figure],
    opts: dict[str, Any],
    deadline: float,
    out: dict[str, bytes | None],
    errors: list[str],
    handle: list[Any],
) -> None:
    import kaleido

    # mathjax=False: kaleido would otherwise load MathJax from a CDN. Choreographer already starts
    # Chromium with --no-sandbox (enable_sandbox defaults to False), which running as root needs.
    k = kaleido.Kaleido(
        path=browser,
        mathjax=False,
        timeout=deadline,
        browser_cls=_offline_chromium_cls(),
    )
    handle.append(k)
    limit = asyncio.timeout(deadline)
    try:
        async with limit:
            await k.open()
            for name, fig in figures.items():
                try:
                    out[name] = await k.calc_fig(fig, opts=opts)
                except Exception as exc:
                    errors.append(f"{name}: {_brief(exc)}")
    except BaseException:
        # A browser that failed or missed the deadline may never answer kaleido's polite
        # Browser.close; once it is gone, the close below skips that and is quick. Blocking this
        # loop briefly is fine: it is ours alone.
        _terminate_browser(k, wait=3)
        if not limit.expired():
            raise
        # Whatever kaleido raised on cancellation says less than this.
        errors.append(f"timed out after {deadline:.0f} s")
    finally:
        async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
            await k.close()


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


def render_pngs(
    figures: Mapping[str, go.Figure],
    width: int = 900,
    height: int = 450,
    scale: float = 1,
    *,
    browser: str | None = None,
    timeout: float = RENDER_TIMEOUT_SECONDS,
) -> dict[str, bytes | None]:
    """PNG bytes per figure name, all from one browser session; None where it can't render."""
    out: dict[str, bytes | None] = dict.fromkeys(figures)
    if not figures:
        return out
    started = time.monotonic()
    path = browser if browser is not None else find_browser()
    if path is None or not _executable(path):
        _logger().warning("Charts not rendered: %s.", _no_browser_reason(path))
        return out

    opts = {"format": "png", "width": width, "height": height, "scale": scale}
    errors: list[str] = []
    handle: list[Any] = []

    def run() -> None:
        try:
            asyncio.run(_render_all(path, figures, opts, timeout, out, errors, handle))
        except BaseException as exc:  # reported below; this thread must never raise
            errors.append(_brief(exc))

    # A thread of its own: asyncio.run needs a loop-free thread (a Prefect task may have a loop),
    # and a bounded join keeps a stuck browser from hanging the run.
    thread = threading.Thread(target=run, name="kaleido-render", daemon=True)
    thread.start()
    thread.join(timeout + _CLOSE_GRACE_SECONDS + _JOIN_MARGIN_SECONDS)
    if thread.is_alive():
        # Last resort when kaleido's own close is stuck too.
        if handle:
            _terminate_browser(handle[0], wait=5)
        errors.append(f"render thread still busy after {timeout:.0f} s")

    result = {name: out.get(name) if not thread.is_alive() else None for name in figures}
    if errors or any(png is None for png in result.values()):
        missing = [name for name, png in result.items() if png is None]
        _logger().warning(
            "Charts not rendered with %s (%s): %s",
            path,
            ", ".join(missing),
            "; ".join(errors) or "no image returned",
        )
    else:
        _log.debug("rendered %d charts in %.1f s", len(result), time.monotonic() - started)
    return result
