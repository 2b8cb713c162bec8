"""A fault-injecting HTTP proxy for an S3 API on loopback (tests only).

It forwards every request to `upstream` (moto's server) and, by a seeded schedule, answers a
share of them itself instead: `503 SlowDown` with S3's XML error body, a connection closed
before forwarding, or a connection closed after the upstream did the work (the client never
learns the write happened). `fail_all` makes every faultable request fail; `spare` exempts
requests (e.g. the bucket HEAD of the pre-flight check, which has its own tests).
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULTS = ("slowdown", "drop", "drop-after")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade", "te"}
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)
_TIMEOUT_S = 30  # every socket here is bounded: a stuck test fails instead of hanging


class FaultyS3Proxy:
    """`with FaultyS3Proxy(upstream, share=0.3, seed=7) as proxy:` -> proxy.endpoint."""

    def __init__(
        self,
        upstream: str,
        share: float = 0.0,
        seed: int = 0,
        spare: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.upstream = urlparse(upstream)
        self.share = share
        self.fail_all = False
        self.spare = spare or (lambda method, path: False)
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fault_for(self, method: str, path: str) -> str | None:
        """The fault this request gets, or None to forward it; one draw per request, in order."""
        with self._lock:
            self.counts["requests"] += 1
            if self.spare(method, path):
                return None
            draw, kind = self._rng.random(), self._rng.choice(FAULTS)
            fault = kind if self.fail_all or draw < self.share else None
            self.counts[fault or "forwarded"] += 1
            return fault

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=_TIMEOUT_S)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: FaultyS3Proxy) -> None:
        self.proxy = proxy  # the handlers read the schedule and the upstream from here
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Forwards one request to the proxy's upstream, or answers it with the fault it drew."""

    server: _ProxyServer

    protocol_version = "HTTP/1.1"  # keep-alive, as boto3/aiohttp expect; also answers Expect: 100-continue
    timeout = _TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # tests count stderr lines; the proxy stays silent

    def _serve(self) -> None:
        body = self._read_body()
        fault = self.server.proxy.fault_for(self.command, self.path)
        if fault == "slowdown":
            return self._answer(503, {"Content-Type": "application/xml"}, _SLOWDOWN)
        if fault == "drop":
            self.close_connection = True  # closed without a byte of answer
            return None
        status, headers, payload = self._forward(body)
        if fault == "drop-after":
            self.close_connection = True  # the upstream did the work; the client never hears
            return None
        return self._answer(status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        up = self.server.proxy.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=_TIMEOUT_S)
        try:
            # Host stays as the client signed it; Content-Length is recomputed from the body.
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, kept, payload
        finally:
            conn.close()

    def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "server", "date"):
                self.send_header(key, value)
        # A HEAD answer carries the object's length but no body.
        length = headers.get("Content-Length") or headers.get("content-length") or str(len(payload))
        self.send_header("Content-Length", length if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve
