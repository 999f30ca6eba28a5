"""The h11 server on real sockets: unix socket mode, curl, keep-alive, errors, cleanup.
(Connection caps and timeouts: test_listeners.py.)"""

from __future__ import annotations

import os
import socket
import stat

import h11
import pytest

from devplug.ops import httpserve
from devplug.ops.httpserve import Response

from .conftest import curl, serve_while


async def echo(method, path, query):
    if path == "/boom":
        raise RuntimeError("handler bug")
    if path == "/missing":
        return httpserve.text(404, "nope")
    body = f"{method} {path} {sorted(query.items())}"
    return Response(200, "text/plain", body.encode())


def raw_exchange(path: str, data: bytes, *, read_until_close: bool = True) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(data)
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    s.close()
    return b"".join(chunks)


async def test_unix_socket_mode_parent_dir_curl_and_cleanup(tmp_path):
    sock = str(tmp_path / "run" / "devplug" / "debug.sock")

    def client(_):
        st = os.stat(sock)
        parent = os.stat(os.path.dirname(sock))
        r = curl("--unix-socket", sock, "http://devplug/inventory?a=1&b=x%20y")
        miss = curl("--unix-socket", sock, "-o", "/dev/null", "-w", "%{http_code}", "http://devplug/missing")
        return st, parent, r, miss

    st, parent, r, miss = await serve_while(httpserve.serve_unix, sock, echo, client=client)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(parent.st_mode) == 0o700
    assert r.returncode == 0, r.stderr
    assert r.stdout == "GET /inventory [('a', '1'), ('b', 'x y')]"
    assert miss.stdout == "404"
    assert not os.path.exists(sock), "socket must be removed on exit"


async def test_bad_request_method_and_handler_errors(tmp_path):
    sock = str(tmp_path / "d.sock")

    def client(_):
        return (
            raw_exchange(sock, b"NOT HTTP AT ALL\r\n\r\n"),
            raw_exchange(sock, b"POST /x HTTP/1.1\r\nhost: d\r\ncontent-length: 3\r\n\r\nabc"),
            raw_exchange(sock, b"GET /boom HTTP/1.1\r\nhost: d\r\n\r\n"),
            raw_exchange(sock, b"GET /x HTTP/1.1\r\n\r\n"),  # HTTP/1.1 without Host
            raw_exchange(sock, b"HEAD /x HTTP/1.1\r\nhost: d\r\nconnection: close\r\n\r\n"),
        )

    garbage, post, boom, no_host, head = await serve_while(httpserve.serve_unix, sock, echo, client=client)
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert post.startswith(b"HTTP/1.1 405 ") and b"allow: GET, HEAD" in post
    assert boom.startswith(b"HTTP/1.1 500 ") and b"handler bug" not in boom
    assert no_host.startswith(b"HTTP/1.1 400 ")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert head.endswith(b"\r\n\r\n"), "HEAD has no body"
    assert b"content-length: 10\r\n" in head.lower()  # len("HEAD /x []")
    assert b"HTTP/1.1 405 Method Not Allowed" in post


async def test_keep_alive_serves_several_requests_on_one_connection(tmp_path):
    sock = str(tmp_path / "d.sock")

    def client(_):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(sock)
        conn = h11.Connection(h11.CLIENT)
        bodies = []
        for i in range(3):
            s.sendall(conn.send(h11.Request(method="GET", target=f"/n{i}", headers=[("host", "d")]))
                      + conn.send(h11.EndOfMessage()))
            body = b""
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
            bodies.append(body)
            conn.start_next_cycle()
        s.close()
        return bodies

    assert await serve_while(httpserve.serve_unix, sock, echo, client=client) == [
        b"GET /n0 []", b"GET /n1 []", b"GET /n2 []"]


async def test_stale_socket_is_replaced_live_one_and_non_socket_refused(tmp_path):
    sock = str(tmp_path / "d.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()  # file left behind, nobody listening
    r = await serve_while(httpserve.serve_unix, sock, echo,
                    client=lambda _: raw_exchange(sock, b"GET /a HTTP/1.1\r\nhost: d\r\nconnection: close\r\n\r\n"))
    assert r.startswith(b"HTTP/1.1 200 ")

    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(sock)
    live.listen(1)
    try:
        with pytest.raises(OSError, match="another process"):
            await httpserve.serve_unix(sock, echo)
    finally:
        live.close()
        os.unlink(sock)

    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(FileExistsError):
        await httpserve.serve_unix(str(regular), echo)
    assert regular.read_text() == "x"


async def test_tcp_on_an_ephemeral_port():
    def client(bound):
        host, port = bound
        return curl("-i", f"http://{httpserve.format_address(host, port)}/metrics")

    r = await serve_while(httpserve.serve_tcp, "127.0.0.1", 0, echo, client=client)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 200")
    assert r.stdout.endswith("GET /metrics []")


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9400", ("127.0.0.1", 9400)),
    (":9400", ("", 9400)),
    ("[::1]:80", ("::1", 80)),
    ("[10.0.0.5]:9101", ("10.0.0.5", 9101)),  # the manifests' [$(POD_IP)]:9101 with an IPv4 pod IP
    ("node.local:0", ("node.local", 0)),
])
def test_parse_address(text, expected):
    assert httpserve.parse_address(text) == expected


@pytest.mark.parametrize("text", ["9400", "host:", "host:99999", "::1:80", "host:x"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        httpserve.parse_address(text)
