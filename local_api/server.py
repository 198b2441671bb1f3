"""Threaded loopback HTTP server speaking the fakerapi.it ``/persons`` contract, with faults."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from local_api.faults import REDIRECT_PREFIX, Decision, FaultConfig, FaultInjector, apply_drift
from local_api.hostile_bodies import deepen, gzip_bomb, warm_gzip_bomb
from local_api.pools import DEFAULT_LOCALE, get_pools
from local_api.records import PersonsQuery, build_records, parse_query

PERSONS_PATHS = frozenset({"/api/v1/persons", "/api/v2/persons"})
# Where the redirect fault points: served like a persons path, so a client that follows shows.
MOVED_PATHS = frozenset(REDIRECT_PREFIX + path for path in PERSONS_PATHS)
NOT_FOUND = {"status": "Not found", "code": 404, "total": 0}
JSON_TYPE = "application/json; charset=utf-8"
UNTRACKED_PATHS = frozenset({"/health", "/__stats", "/__served"})
# A persons request carrying this header is a test asking again for records it was served: it
# gets the plain 200 (drift included, no other fault), and is neither counted nor logged.
REPLAY_HEADER = "X-Local-Api-Replay"


def dump_json(obj: object) -> bytes:
    """Compact UTF-8 JSON with non-ASCII kept literal, as the public API sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class Stats:
    """Thread-safe counts of tracked responses by status code and of injected faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: collections.Counter[int] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        # Persons requests being handled right now, and the most seen at once: lets tests and the
        # benchmark check a client's concurrency bound from the server's side.
        self._in_flight = 0
        self._max_in_flight = 0
        # When each response went out (Unix seconds) and its status: a client's request rate as
        # the server saw it, e.g. "never more than 30 in any 60 s".
        self._answered: list[tuple[float, int]] = []

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count one persons request as in flight while the block runs."""
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def count(self, status: int | None = None, fault: str | None = None) -> None:
        """Record one response status and/or one injected fault."""
        with self._lock:
            if status is not None:
                self._status[status] += 1
                self._answered.append((time.time(), status))
            if fault is not None:
                self._faults[fault] += 1

    def snapshot(self) -> dict[str, Any]:
        """Counts as JSON-ready dict; ``total`` includes resets, which have no status."""
        with self._lock:
            total = sum(self._status.values()) + self._faults["reset"]
            return {
                "total": total,
                "by_status": {str(k): v for k, v in sorted(self._status.items())},
                "faults": dict(sorted(self._faults.items())),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "answered": [[at, status] for at, status in self._answered],
            }

    def reset(self) -> None:
        """Zero all counters."""
        with self._lock:
            self._status.clear()
            self._faults.clear()
            self._answered.clear()
            self._max_in_flight = self._in_flight


class ServedLog:
    """The persons queries answered with 200, in the order first answered, each listed once with
    how often it was answered (a retried page is one query answered twice)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[tuple[str, PersonsQuery], int] = {}

    def add(self, path: str, query: PersonsQuery) -> None:
        """Log one 200 answer to query on path."""
        with self._lock:
            self._times[(path, query)] = self._times.get((path, query), 0) + 1

    def snapshot(self) -> list[dict[str, Any]]:
        """[{"path", "params" (the query string asking for it again), "times"}], in order."""
        with self._lock:
            return [
                {"path": path, "params": query.params(), "times": times}
                for (path, query), times in self._times.items()
            ]

    def reset(self) -> None:
        """Forget every logged query."""
        with self._lock:
            self._times.clear()


class BodyCache:
    """Small LRU of serialized seeded responses keyed by the normalized query."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def get(self, key: str) -> bytes | None:
        """Cached body or None; a hit becomes most recent."""
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: str, body: bytes) -> None:
        """Store a body, evicting the least recently used beyond the size."""
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = body
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class _HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the app state and can drop open keep-alive sockets."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: LocalApiServer) -> None:
        self.app = app
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-response is no server error: a bounded client stops
        reading a gzip bomb, and a streaming one closes an error response unread. Anything
        else still prints its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Shut down idle keep-alive sockets so a stopped server stops answering."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Routes requests; persons requests go through the fault injector."""

    protocol_version = "HTTP/1.1"
    server_version = "local-faker-api/1.0"
    timeout = 60  # idle keep-alive connections must not pin threads forever
    # Headers and body go out in two writes; with Nagle on, small responses wait for the
    # client's delayed ACK.
    disable_nagle_algorithm = True
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Write a complete JSON response with an exact Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _track(self, path: str, status: int) -> None:
        if path not in UNTRACKED_PATHS:
            self.server.app.stats_counter.count(status=status)

    def do_GET(self) -> None:
        """Serve /health, /__stats, /__served and the persons endpoints; anything else is 404."""
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        app = self.server.app
        if path == "/health":
            self._send(200, dump_json({"status": "OK"}))
        elif path == "/__stats":
            self._send(200, dump_json(app.stats()))
        elif path == "/__served":
            self._send(200, dump_json({"queries": app.served()}))
        elif path in PERSONS_PATHS and self.headers.get(REPLAY_HEADER):
            query = parse_query(parse_qs(url.query, keep_blank_values=True))
            self._send(200, app.persons_body(query))
        elif path in PERSONS_PATHS:
            with app.stats_counter.in_flight():
                self._persons(path, parse_qs(url.query, keep_blank_values=True))
        elif path in MOVED_PATHS:
            self._ok(path, parse_query(parse_qs(url.query, keep_blank_values=True)), Decision())
        else:
            self._track(path, 404)
            self._send(404, dump_json(NOT_FOUND))

    def _method_not_allowed(self) -> None:
        # Any request body is unread, so the connection cannot be reused.
        self.close_connection = True
        self.server.app.stats_counter.count(status=405)
        self._send(405, dump_json({"message": "Method Not Allowed"}), {"Connection": "close"})

    do_POST = do_PUT = do_PATCH = do_DELETE = _method_not_allowed

    def _abort(self) -> None:
        """Drop the connection with a TCP reset and no response at all."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _persons(self, path: str, params: dict[str, list[str]]) -> None:
        app = self.server.app
        query = parse_query(params)
        decision = app.injector.decide(f"{path}?{query.cache_key()}")
        if decision.reset:
            app.stats_counter.count(fault="reset")
            self._abort()
            return
        if decision.hang:
            app.stats_counter.count(fault="hang")
        # Event wait rather than sleep so stop() does not wait for hung handlers.
        if decision.delay > 0 and self.server.stopping.wait(decision.delay):
            self._abort()
            return
        if decision.rate_limited:
            self._error(429, "Too Many Attempts.", decision)
        elif decision.down:
            self._error(503, "Service Unavailable", decision)
        elif decision.error_status is not None:
            self._error(decision.error_status, "Server Error", decision)
        elif decision.redirect:
            self._redirect(path, query)
        else:
            self._ok(path, query, decision)

    def _redirect(self, path: str, query: PersonsQuery) -> None:
        """Point the client at the same query under REDIRECT_PREFIX, with an empty body."""
        app = self.server.app
        app.stats_counter.count(status=app.faults.redirect_status, fault="redirect")
        # The Host the client used: app.url may be a wildcard address (0.0.0.0 under compose).
        root = f"http://{self.headers['Host']}" if self.headers["Host"] else app.url
        location = f"{root}{REDIRECT_PREFIX}{path}?{urlencode(query.params())}"
        self._send(app.faults.redirect_status, b"", {"Location": location})

    def _error(self, status: int, message: str, decision: Decision) -> None:
        app = self.server.app
        if app.faults.error_message is not None:
            message = app.faults.error_message
        app.stats_counter.count(status=status)
        self._send(status, dump_json({"message": message}), decision.headers)

    def _ok(self, path: str, query: PersonsQuery, decision: Decision) -> None:
        app = self.server.app
        body, headers = app.persons_body(query), dict(decision.headers)
        if decision.short_fraction is not None:
            app.stats_counter.count(fault="short")
            body = _shorten(body, decision.short_fraction)
        app.stats_counter.count(status=200)
        app.served_log.add(path, query)
        if decision.deep_json:
            app.stats_counter.count(fault="deep-json")
            body = deepen(body, app.faults.deep_json_levels)
        if decision.gzip_bomb:
            app.stats_counter.count(fault="gzip-bomb")
            body = gzip_bomb(body, app.faults.gzip_bomb_bytes)
            # A client that bounds what it reads hangs up mid-body: the point, not an error. Say
            # the connection closes, so no client tries to reuse it.
            headers.update({"Content-Encoding": "gzip", "Connection": "close"})
            self.close_connection = True
        if decision.truncate:
            self._truncated(body, headers)
            return
        if decision.slow_body:
            self._slow(body, headers)
            return
        self._send(200, body, headers)  # a client hanging up: see _HttpServer.handle_error

    def _slow(self, body: bytes, headers: dict[str, str]) -> None:
        """The whole body, one byte per `slow_body_seconds`, after headers sent at once.

        Bounded: once a client hangs up, the next write or the one after fails (handle_error: no
        server error), and stop() wakes the wait."""
        app = self.server.app
        app.stats_counter.count(fault="slow-body")
        self._json_headers(len(body), headers)
        for i in range(len(body)):
            if self.server.stopping.wait(app.faults.slow_body_seconds):
                self._abort()
                return
            self.wfile.write(body[i : i + 1])

    def _truncated(self, body: bytes, headers: dict[str, str]) -> None:
        """Half the body: whole as far as HTTP goes (json mode), or cut short (connection)."""
        app = self.server.app
        app.stats_counter.count(fault="truncate")
        half = body[: len(body) // 2]
        if app.faults.truncate_mode == "json":
            self._send(200, half, headers)
            return
        # Promise the full length, deliver half, then close: the client sees a short read.
        self.close_connection = True
        self._json_headers(len(body), headers)
        self.wfile.write(half)

    def _json_headers(self, length: int, headers: dict[str, str]) -> None:
        """A 200's status line and headers for a JSON body of `length` bytes, sent at once."""
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


def _shorten(body: bytes, fraction: float) -> bytes:
    """Re-serialize a response keeping only the first share of its records (at least one less)."""
    doc = json.loads(body)
    data = doc["data"]
    keep = min(max(0, int(len(data) * fraction)), max(0, len(data) - 1))
    doc["data"] = data[:keep]
    doc["total"] = keep
    return dump_json(doc)


class LocalApiServer:
    """A local Faker-API-compatible server on a background thread; use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        *,
        verbose: bool = False,
        warm_locales: tuple[str, ...] = (DEFAULT_LOCALE,),
        cache_size: int = 32,
    ) -> None:
        self.host = host
        self.port = port
        self.faults = faults or FaultConfig()
        self.verbose = verbose
        self.warm_locales = warm_locales
        self.injector = FaultInjector(self.faults)
        self.stats_counter = Stats()
        self.served_log = ServedLog()
        self.cache = BodyCache(cache_size)
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base the pipeline appends ``/persons`` to (v2)."""
        return f"{self.url}/api/v2"

    def start(self) -> LocalApiServer:
        """Warm the pools, bind (port 0 picks a free port) and serve on a daemon thread."""
        for locale in self.warm_locales:
            get_pools(locale)
        if self.faults.gzip_bomb_rate:
            warm_gzip_bomb(self.faults.gzip_bomb_bytes)
        self._httpd = _HttpServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and drop open connections; idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait(self) -> None:
        """Block until the serving thread ends (after ``stop``)."""
        if self._thread is not None:
            self._thread.join()

    def stats(self) -> dict[str, Any]:
        """Counts of persons/404 responses by status, total and injected faults."""
        return self.stats_counter.snapshot()

    def served(self) -> list[dict[str, Any]]:
        """The persons queries answered with 200, in the order first answered, each once with
        the query string that asks for it again (send it with REPLAY_HEADER) and its count."""
        return self.served_log.snapshot()

    def reset_stats(self) -> None:
        """Zero the counters, forget the served queries and rate-limit and fail-first history."""
        self.stats_counter.reset()
        self.served_log.reset()
        self.injector.reset()

    def persons_body(self, query: PersonsQuery) -> bytes:
        """Serialized 200 response for a query; seeded ones come from the LRU when possible."""
        key = query.cache_key()
        if query.seed is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        records = build_records(query, get_pools(query.locale))
        apply_drift(records, self.faults.drift)
        envelope = {
            "status": "OK",
            "code": 200,
            "locale": query.locale,
            "seed": None if query.seed is None else str(query.seed),
            "total": len(records),
            "data": records,
        }
        body = dump_json(envelope)
        if query.seed is not None:
            self.cache.put(key, body)
        return body

    def __enter__(self) -> LocalApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
