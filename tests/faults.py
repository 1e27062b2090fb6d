"""Fault injection on loopback, for tests and benchmarks: an S3 proxy that blacks out or throttles,
and killing processes this test started, by pid.

`S3Proxy` relays HTTP between clients and an S3-compatible endpoint (moto's server) on 127.0.0.1.
In `blackout` it cuts every request's connection without an answer (as a restarting MinIO does:
botocore sees "Connection was closed before we received a valid response"); in `throttle` it
answers a share of requests with 503 SlowDown, as S3 does under a request storm. `delay_s` holds
every request that long before relaying it, as a distant store's first byte takes.
"""
from __future__ import annotations

import http.client
import http.server
import os
import random
import signal
import threading
import time
from collections import Counter
from urllib.parse import urlparse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class _Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients use S3

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _relay(self) -> None:
        proxy: S3Proxy = self.server.proxy
        body = self._body()
        if proxy.delay_s:
            time.sleep(proxy.delay_s)
        outcome = proxy.decide(self.path)
        proxy.counts[outcome] += 1
        if outcome != "relayed":
            proxy.faulted.append(f"{self.command} {self.path}")
        if outcome == "cut":
            self.close_connection = True
            self.connection.close()
            return
        if outcome == "throttled":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has headers only
                self.wfile.write(SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
        try:
            upstream.request(self.command, self.path, body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        proxy.relayed(self.path)  # before the client hears of it: a fault it triggers meets what follows
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(key, value)
        # A HEAD answer has no body but says the object's length, which clients take as its size
        # (pyarrow reads exactly that many bytes): relay it, not the empty body's.
        length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


class S3Proxy:
    """A loopback proxy to `upstream` (an http:// endpoint); `url` is where clients should point."""

    def __init__(self, upstream: str, seed: int = 0):
        self.upstream = urlparse(upstream)
        self.mode, self.share = "pass", 0.0
        self.delay_s = 0.0  # added to every request (latency, not a fault)
        self.failing: str | None = None  # requests whose path holds this get 503 SlowDown, always
        self.counts: Counter[str] = Counter()
        self.faulted: list[str] = []  # "METHOD path" of every request cut or throttled
        self._triggers: list[tuple[str, float]] = []  # (path part, seconds): see blackout_after
        self._faults = 0  # faults started by fault_for, so that only the latest one heals
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def decide(self, path: str = "") -> str:
        with self._lock:
            if self.failing and self.failing in path:
                return "throttled"
            if self.mode == "blackout":
                return "cut"
            if self.mode == "throttle" and self._random.random() < self.share:
                return "throttled"
            return "relayed"

    def blackout(self) -> None:
        self.mode = "blackout"

    def throttle(self, share: float) -> None:
        self.mode, self.share = "throttle", share

    def heal(self) -> None:
        self.mode = "pass"

    def fault_for(self, seconds: float, start=None) -> threading.Thread:
        """Apply `start` (default: blackout) now and heal after `seconds`, in the background,
        unless another fault has started meanwhile (then that one heals)."""
        (start or self.blackout)()
        self._faults += 1
        mine = self._faults

        def later() -> None:
            time.sleep(seconds)
            if self._faults == mine:
                self.heal()

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        return thread

    def blackout_after(self, path_part: str, seconds: float) -> None:
        """Black out for `seconds` once a request whose path holds `path_part` has been relayed:
        the blackout is on before that request's client gets its answer, so whatever the client
        does next meets it (watching the server from outside would race with the client)."""
        with self._lock:
            self._triggers.append((path_part, seconds))

    def relayed(self, path: str) -> None:
        with self._lock:
            fired = [t for t in self._triggers if t[0] in path]
            self._triggers = [t for t in self._triggers if t not in fired]
        for _, seconds in fired:
            self.fault_for(seconds)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kill a process this test started (an actor, a node's raylet), by pid; gone already is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
