"""The client's HTTP transport against a real HTTP/1.1 server (the standard library's):
kept-alive connections, a connection the server dropped, streams, refused connections."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mec_client.transport import HTTPTransport, TransportError


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    connections: set = set()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        Handler.connections.add(self.client_address)
        if self.path.startswith("/prefix/lines"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"line {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"path": self.path, "auth": self.headers["Authorization"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path.endswith("close"):
            self.close_connection = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.connections = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def transport(server) -> HTTPTransport:
    return HTTPTransport(f"http://127.0.0.1:{server.server_port}/prefix", timeout=5,
                         headers={"Authorization": "Bearer k"})


def test_requests_share_one_kept_alive_connection_with_the_prefix_and_query(server):
    t = transport(server)
    first = t.request("GET", "/v1/jobs", params={"name": ["a", "b"], "limit": 2})
    assert first.json() == {"path": "/prefix/v1/jobs?name=a&name=b&limit=2",
                            "auth": "Bearer k"}
    t.request("GET", "/v1/jobs")
    assert len(Handler.connections) == 1
    t.close()


def test_a_connection_the_server_closed_is_replaced(server):
    t = transport(server)
    t.request("GET", "/close")
    time.sleep(0.1)
    assert t.request("GET", "/after").json()["path"] == "/prefix/after"
    assert len(Handler.connections) == 2


def test_an_error_answer_is_an_answer_and_a_body_is_sent(server):
    answer = transport(server).request("POST", "/x", body=b'{"detail": "no"}',
                                       headers={"Content-Type": "application/json"})
    assert answer.status == 404 and answer.json() == {"detail": "no"}


def test_a_stream_yields_lines_as_they_come(server):
    with transport(server).stream("GET", "/lines") as (response, lines):
        assert response.status == 200
        assert list(lines) == ["line 0", "line 1", "line 2"]


def test_a_refused_connection_is_unsent():
    with pytest.raises(TransportError) as refused:
        HTTPTransport("http://127.0.0.1:9", timeout=5, headers={}).request("GET", "/")
    assert refused.value.unsent


def test_only_http_urls_are_taken():
    with pytest.raises(ValueError, match="not an http"):
        HTTPTransport("ftp://example.org", timeout=1, headers={})
