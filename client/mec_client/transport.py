"""HTTP/1.1 over the standard library's http.client: one kept-alive connection per thread,
a fresh one for each stream. Small on purpose: the client must import in a fraction of a
second, and tests swap in a fake with the same `request` and `stream`."""

from __future__ import annotations

import http.client
import json
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit


class TransportError(Exception):
    """The request got no HTTP answer. `unsent`: the connection never opened, so the server
    cannot have acted on it (safe to send again, whatever the method)."""

    def __init__(self, message: str, unsent: bool) -> None:
        super().__init__(message)
        self.unsent = unsent


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str], content: bytes
                 ) -> None:
        self.status, self.reason, self.headers, self.content = status, reason, headers, content

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class HTTPTransport:
    """Requests to one server (`url`: http:// or https://, with an optional path prefix)."""

    def __init__(self, url: str, timeout: float | None, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https, self.host = parts.scheme == "https", parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix, self.timeout, self.headers = parts.path.rstrip("/"), timeout, headers
        self._local = threading.local()

    def request(self, method: str, path: str, params: dict | None = None,
                headers: dict[str, str] | None = None, body: bytes | BinaryIO | None = None
                ) -> Response:
        conn = self._connection()
        try:
            answer = self._send(conn, method, path, params, headers, body)
            content = answer.read()
        except BaseException:
            conn.close()
            raise
        if answer.will_close:
            conn.close()
        return Response(answer.status, answer.reason, _lower(answer.getheaders()), content)

    @contextmanager
    def stream(self, method: str, path: str, params: dict | None = None
               ) -> Iterator[tuple[Response, Iterator[str]]]:
        """An answer read line by line as it comes (no read timeout): (response without its
        content, its lines). An error answer's content is read whole."""
        conn = self._new(timeout=None)
        try:
            answer = self._send(conn, method, path, params, None, None)
            response = Response(answer.status, answer.reason, _lower(answer.getheaders()), b"")
            if answer.status >= 400:
                response.content = answer.read()
            yield response, _lines(answer)
        finally:
            conn.close()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str,
              params: dict | None, headers: dict[str, str] | None,
              body: bytes | BinaryIO | None) -> http.client.HTTPResponse:
        target = self.prefix + path
        if params:
            target += "?" + urlencode(params, doseq=True)
        try:
            if conn.sock is None:
                conn.connect()
        except OSError as exc:  # refused, unknown host, connect timeout: nothing was sent
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {exc}",
                                 unsent=True) from exc
        try:
            conn.request(method, target, body=body, headers=self.headers | (headers or {}))
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{method} {target}: {exc or type(exc).__name__}",
                                 unsent=False) from exc

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's kept-alive connection; a new one if the server has closed it
        (a readable idle socket means EOF or a stray byte: either way, not reusable)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and \
                select.select([conn.sock], [], [], 0)[0]:
            conn.close()
        if conn is None:
            conn = self._local.conn = self._new(self.timeout)
        return conn

    def _new(self, timeout: float | None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)


def _lower(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def _lines(answer: http.client.HTTPResponse) -> Iterator[str]:
    while line := answer.readline():
        yield line.decode("utf-8", "replace").rstrip("\r\n")
