"""A web page cannot drive a real ``sam2volume serve`` on 127.0.0.1 (issue 19, item 5), token files give clear
errors and warnings, and idle connections are closed (item 13).

Every server here is a real ``sam2volume serve`` process on loopback, started as a user starts it by hand
(no --token-file unless the test gives one); the hostile requests are the ones a browser page can send.
"""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.parse
from pathlib import Path

import pytest

from sam2volume import read_volume
from sam2volume.cli import main
from sam2volume.client import RemoteSession, check_server, read_token
from sam2volume.server.wire import encode_array, volume_header, volume_id

from server_helpers import raw, serve_process, slab, stats

PROMPTS = Path(__file__).resolve().parents[1] / "examples" / "prompts_ct_abdomen.json"


@pytest.fixture(scope="module")
def ct(totalseg):
    return slab(read_volume(totalseg / "example_ct_sm.nii.gz"), first=10, n=4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The README's first example: `sam2volume serve` on loopback, no --token-file (its token folder is this
    test's: the clients here look there too)."""
    folder = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAM2VOLUME_TOKEN_DIR", str(folder / "tokens"))
        mp.delenv("SAM2VOLUME_TOKEN", raising=False)
        with serve_process(token_dir=folder) as s:
            yield s


def _err(out):
    assert isinstance(out, dict) and set(out) == {"error"}, out
    return out["error"]["type"], out["error"]["message"]


def _port(server):
    return urllib.parse.urlsplit(server.url).port


def test_serve_on_loopback_makes_a_token_only_the_user_can_read(server):
    path = server.ready["token_file"]
    assert path.endswith(f"loopback-{_port(server)}.token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert path in server.log.read_text()  # the start-up log names the file once (never the token)
    token = open(path).read().strip()
    assert len(token) >= 32 and token not in server.log.read_text()
    # no token: refused (today's server answered every route)
    status, out = raw(server, "GET", "/v1/stats", token=None)
    assert status == 401 and _err(out)[0] == "AuthError"
    status, out = raw(server, "POST", "/v1/sessions", {"volume": "f" * 64, "engine": "baseline"}, token=None)
    assert status == 401


@pytest.mark.parametrize("name, headers, body, status, kind", [
    ("text/plain POST", {"Content-Type": "text/plain;charset=UTF-8"}, b'{"volume": "VID", "engine": "baseline"}', 415, "ContentTypeError"),
    ("form POST", {"Content-Type": "application/x-www-form-urlencoded"}, b'{"volume": "VID", "engine": "baseline"}=', 415, "ContentTypeError"),
    ("multipart form POST", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n\r\n--x--", 415, "ContentTypeError"),
    ("no Content-Type", {}, b'{"volume": "VID", "engine": "baseline"}', 415, "ContentTypeError"),
    ("DNS rebinding", {"Host": "evil.example", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "HostError"),
    ("DNS rebinding with the port", {"Host": "evil.example:PORT", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "HostError"),
    ("foreign Origin", {"Origin": "http://evil.example", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "OriginError"),
    ("another local port's Origin", {"Origin": "http://127.0.0.1:1", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "OriginError"),
    ("opaque Origin", {"Origin": "null", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "OriginError"),
    ("Sec-Fetch-Site cross-site", {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "OriginError"),
    ("Sec-Fetch-Site same-site", {"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, b'{"volume": "VID", "engine": "baseline"}', 403, "OriginError"),
])
def test_requests_a_web_page_can_send_are_refused(server, ct, name, headers, body, status, kind):
    """As a page sends them (no token), and each check on its own (with the right token, which a page lacks)."""
    token_file = server.ready.get("token_file")
    tokens = [None] + ([open(token_file).read().strip()] if token_file else [])
    vid = volume_id(ct)
    headers = {k: v.replace("PORT", str(_port(server))) for k, v in headers.items()}
    body = body.replace(b"VID", vid.encode())
    for token in tokens:
        got, out = raw(server, "POST", "/v1/sessions", body, token=token, headers=headers)
        assert got == status and _err(out)[0] == kind, (name, token is None, got, out)
        got, out = raw(server, "GET", "/v1/stats", token=token, headers=headers)
        if kind == "ContentTypeError" and "Content-Type" not in headers:
            assert got == (200 if token else 401)  # a GET without a body needs no Content-Type
        else:  # one that gives another type is refused, as are the Host and Origin problems
            assert got == status and _err(out)[0] == kind, (name, token is None, got, out)
    server.token = tokens[-1]
    if kind == "ContentTypeError" and "Content-Type" not in headers:  # a volume upload must be application/octet-stream
        data = b"".join(encode_array(volume_header(ct), ct.array))
        got, out = raw(server, "PUT", f"/v1/volumes/{vid}", data, headers={"Content-Type": "application/json"})
        assert got == 415 and _err(out)[0] == "ContentTypeError" and "application/octet-stream" in _err(out)[1]
    assert stats(server)["sessions"] == 0  # nothing was opened


def test_the_local_client_reads_the_token_and_works(server, ct):
    """RemoteSession (and --server) given no token find the one the server wrote; localhost works too."""
    for url in (server.url, server.url.replace("127.0.0.1", "localhost")):
        with RemoteSession(url, ct, "axial", engine="baseline") as session:
            mask = session.add_points(1, [[60, 50, 1]])
            assert mask.any()
            session.propagate()
            assert session.result().array.any()
    assert check_server(server.url)["models"]  # the Slicer module's Test connection, no token given
    assert read_token(url=server.url.replace("127.0.0.1", "localhost")) == read_token(url=server.url)
    assert read_token(url="http://gpu-box:8765") is None  # only loopback URLs read a local token file


def test_the_command_line_with_server_and_no_token_works(server, totalseg, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    assert main(["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(PROMPTS), "-o", str(out),
                 "--engine", "baseline", "-q", "--server", server.url]) == 0, capsys.readouterr().err
    assert out.is_file()


def test_the_token_file_goes_when_the_server_stops(tmp_path):
    with serve_process(token_dir=tmp_path) as s:
        path = s.ready["token_file"]
        assert os.path.isfile(path)
    assert not os.path.exists(path)


def test_no_token_opt_out_and_allow_host(tmp_path):
    with serve_process("--no-token", "--allow-host", "seg.example.org", token_dir=tmp_path) as s:
        assert "token_file" not in s.ready
        assert raw(s, "GET", "/v1/stats", token=None)[0] == 200  # the old behaviour, asked for
        port = _port(s)
        assert raw(s, "GET", "/v1/stats", token=None, headers={"Host": f"seg.example.org:{port}"})[0] == 200
        assert raw(s, "GET", "/v1/stats", token=None, headers={"Host": f"localhost:{port}"})[0] == 200
        assert raw(s, "GET", "/v1/stats", token=None, headers={"Host": f"[::1]:{port}"})[0] == 200
        assert raw(s, "GET", "/v1/stats", token=None, headers={"Origin": f"http://127.0.0.1:{port}"})[0] == 200  # itself
        status, out = raw(s, "GET", "/health", token=None, headers={"Host": f"evil.example:{port}"})
        assert status == 403 and _err(out)[0] == "HostError" and "--allow-host" in _err(out)[1]
        status, out = raw(s, "POST", "/v1/sessions", b"{}", token=None, headers={"Content-Type": "text/plain"})
        assert status == 415  # still no web page
        assert stats(s)["sessions"] == 0


def test_bad_guard_options_exit_2_before_listening(tmp_path, capsys):
    tok = tmp_path / "tok"
    tok.write_text("x" * 40)
    tok.chmod(0o600)
    assert main(["serve", "--port", "0", "--no-token", "--token-file", str(tok)]) == 2
    assert "--no-token" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--no-token"]) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--token-file", str(tok), "--allow-host", "http://x.org/"]) == 2
    err = capsys.readouterr().err
    assert "--allow-host 'http://x.org/'" in err and "Traceback" not in err
    assert main(["serve", "--port", "0", "--token-file", str(tok), "--keep-alive-timeout", "0"]) == 2
    assert "--keep-alive-timeout" in capsys.readouterr().err


def test_a_non_utf8_token_file_is_one_sentence_with_exit_2(tmp_path, totalseg, capsys):
    bad = tmp_path / "latin1.token"
    bad.write_bytes("geheim-schlüssel-0123456789".encode("latin-1"))
    assert main(["serve", "--port", "0", "--token-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"token file {bad} is not UTF-8" in err and "Traceback" not in err and err.count("\n") == 1
    out = tmp_path / "o.nii.gz"
    assert main(["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(PROMPTS), "-o", str(out),
                 "--engine", "baseline", "-q", "--server", "http://127.0.0.1:9", "--token-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"token file {bad} is not UTF-8" in err and "Traceback" not in err
    assert not out.exists()


def _closed_by_server(sock: socket.socket, limit: float = 30.0) -> bool:
    """True once the server closes ``sock`` (EOF or reset); False if it is still open after ``limit`` s."""
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass  # a response, then the close
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_readable_token_file_warns_and_idle_connections_are_closed(tmp_path, ct):
    tok = tmp_path / "shared.token"
    tok.write_text("s3cret-token-0123456789abcdef\n")
    tok.chmod(0o644)
    with serve_process("--token-file", str(tok), "--keep-alive-timeout", "1", token_dir=tmp_path) as s:
        warning = [line for line in s.log.read_text().splitlines() if "chmod 600" in line]
        assert len(warning) == 1 and str(tok) in warning[0] and "WARNING" in warning[0]
        s.token = "s3cret-token-0123456789abcdef"
        port = _port(s)
        # opened and never used: uvicorn alone holds it for ever
        idle = socket.create_connection(("127.0.0.1", port))
        # a header dripped a byte at a time: the deadline is not renewed by each piece
        drip = socket.create_connection(("127.0.0.1", port))
        # after one answered request (keep-alive)
        used = socket.create_connection(("127.0.0.1", port))
        try:
            used.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: ".encode()
            cut = False
            for i in range(40):  # 40 x 0.25 s: far beyond the 1 s timeout
                try:
                    drip.sendall(head[i:i + 1] if i < len(head) else b"a")
                except OSError:
                    cut = True
                    break
                time.sleep(0.25)
            assert cut or _closed_by_server(drip, 5.0)
            assert _closed_by_server(idle)
            assert _closed_by_server(used)
        finally:
            for c in (idle, drip, used):
                c.close()
        # a request whose header is in is not cut by the timer: a volume upload sent slowly in pieces
        data = b"".join(encode_array(volume_header(ct), ct.array))
        up = socket.create_connection(("127.0.0.1", port))
        try:
            up.sendall((f"PUT /v1/volumes/{volume_id(ct)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {s.token}\r\n"
                        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
            step = len(data) // 6 + 1
            for k in range(0, len(data), step):
                piece = data[k:k + step]
                up.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                time.sleep(0.5)  # 3 s in all, three times the keep-alive timeout
            up.sendall(b"0\r\n\r\n")
            up.settimeout(30)
            reply = up.recv(65536)
            assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
        finally:
            up.close()
        assert stats(s)["volumes"] == 1
