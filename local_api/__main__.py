"""CLI: ``python -m local_api --port 8000 [fault flags]`` serves until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from local_api.faults import (
    DRIFTS,
    REDIRECT_STATUSES,
    RETRY_AFTER_FORMATS,
    TRUNCATE_MODES,
    FaultConfig,
)
from local_api.pools import DEFAULT_LOCALE
from local_api.server import LocalApiServer


def _rate(value: str) -> float:
    """argparse type for a fraction in [0, 1]."""
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return rate


def _statuses(value: str) -> tuple[int, ...]:
    """argparse type for a comma list of HTTP status codes."""
    try:
        codes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad status list {value!r}") from exc
    if not codes or any(not 100 <= c <= 599 for c in codes):
        raise argparse.ArgumentTypeError(f"bad status list {value!r}")
    return codes


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface, one flag per fault."""
    p = argparse.ArgumentParser(prog="python -m local_api", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    p.add_argument("--no-warm", dest="warm", action="store_false", help="skip en_US pool warm-up")
    p.add_argument("--cache-size", type=int, default=32, help="seeded responses kept in the LRU")
    log = p.add_mutually_exclusive_group()
    log.add_argument("--quiet", action="store_true", help="print only the ready line")
    log.add_argument("--verbose", action="store_true", help="log every request to stderr")
    f = p.add_argument_group("faults (persons endpoints only)")
    f.add_argument("--rate-limit", type=int, help="max requests per --rate-window, then 429")
    f.add_argument("--rate-window", type=float, default=60.0, help="sliding window, seconds")
    f.add_argument("--retry-after", choices=RETRY_AFTER_FORMATS, default="seconds")
    f.add_argument("--error-rate", type=_rate, default=0.0, help="share of 5xx responses")
    f.add_argument("--error-statuses", type=_statuses, default=(500,), help="e.g. 500,502,503")
    f.add_argument("--fail-first", type=int, default=0, help="first N tries per query fail")
    f.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    f.add_argument("--truncate-rate", type=_rate, default=0.0, help="share of cut bodies")
    f.add_argument("--truncate-mode", choices=TRUNCATE_MODES, default="json")
    f.add_argument("--reset-rate", type=_rate, default=0.0, help="share of dropped connections")
    f.add_argument("--hang-rate", type=_rate, default=0.0, help="share of hung requests")
    f.add_argument("--hang-seconds", type=float, default=30.0, help="how long a hang lasts")
    f.add_argument("--short-rate", type=_rate, default=0.0, help="share of short pages")
    f.add_argument(
        "--drift",
        action="append",
        default=[],
        help=f"schema drift, repeatable or comma list: {', '.join(DRIFTS)}",
    )
    f.add_argument("--down", action="store_true", help="answer every request with 503")
    f.add_argument(
        "--error-message",
        metavar="TEXT",
        help="JSON message of every 429/503/5xx instead of default",
    )
    f.add_argument("--redirect-rate", type=_rate, default=0.0, help="share of redirects")
    f.add_argument("--redirect-status", type=int, choices=REDIRECT_STATUSES, default=302)
    f.add_argument("--gzip-bomb-rate", type=_rate, default=0.0, help="share of gzip bombs")
    f.add_argument(
        "--gzip-bomb-bytes", type=int, default=1 << 30, help="what a bomb expands to (1 GiB)"
    )
    f.add_argument("--deep-json-rate", type=_rate, default=0.0, help="share of deep JSON bodies")
    f.add_argument("--deep-json-levels", type=int, default=900, help="nesting of deep JSON")
    f.add_argument(
        "--slow-body-rate", type=_rate, default=0.0, help="share of bodies sent a byte at a time"
    )
    f.add_argument(
        "--slow-body-first", type=int, default=0, help="first N tries per query get a slow body"
    )
    f.add_argument(
        "--slow-body-seconds", type=float, default=1.0, help="pause before each byte of a slow body"
    )
    f.add_argument("--fault-seed", type=int, default=0, help="seed for random fault draws")
    return p


def faults_from_args(args: argparse.Namespace) -> FaultConfig:
    """Build the FaultConfig from parsed arguments."""
    drift = tuple(d for item in args.drift for d in item.split(",") if d.strip())
    return FaultConfig(
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        retry_after=args.retry_after,
        error_rate=args.error_rate,
        error_statuses=args.error_statuses,
        fail_first=args.fail_first,
        latency_ms=args.latency_ms,
        truncate_rate=args.truncate_rate,
        truncate_mode=args.truncate_mode,
        reset_rate=args.reset_rate,
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        short_rate=args.short_rate,
        drift=drift,
        down=args.down,
        error_message=args.error_message,
        redirect_rate=args.redirect_rate,
        redirect_status=args.redirect_status,
        gzip_bomb_rate=args.gzip_bomb_rate,
        gzip_bomb_bytes=args.gzip_bomb_bytes,
        deep_json_rate=args.deep_json_rate,
        deep_json_levels=args.deep_json_levels,
        slow_body_rate=args.slow_body_rate,
        slow_body_first=args.slow_body_first,
        slow_body_seconds=args.slow_body_seconds,
        fault_seed=args.fault_seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = faults_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    server = LocalApiServer(
        args.host,
        args.port,
        faults,
        verbose=args.verbose,
        warm_locales=(DEFAULT_LOCALE,) if args.warm else (),
        cache_size=args.cache_size,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    # Consumers (Makefile, tests, compose) wait for this line, so flush it immediately.
    print(f"local_api ready at {server.base_url}", flush=True)
    if not args.quiet:
        active = [k for k, v in vars(faults).items() if v != getattr(FaultConfig(), k)]
        print(f"faults: {', '.join(active) or 'none'}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
