"""The server's guards over real HTTP on loopback: huge declared image sizes (413), slow and
greedy clients (head deadline, per-client connection cap), Host and Origin checks."""

from __future__ import annotations

import io
import select
import selectors
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from web_helpers import random_png

from predict_helpers import dicom_dataset
from ssam.cli.main import main
from ssam.web.settings import ServerSettings, normalise_host, normalise_origin
from ssam.web.uploads import identify_upload

LOOPBACK = "127.0.0.1"
OTHER_CLIENT = "127.0.0.2"  # a second client address on the same loopback interface
HUGE = 30_000  # 30000 x 30000 = 900 M pixels: past Pillow's ceiling of 2 x 89.5 M


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A real, complete 1-bit black PNG of width x height (its pixels compress ~1000:1)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(
        compressor.compress(row * min(1000, height - top)) for top in range(0, height, 1000)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    chunks = [(b"IHDR", ihdr), (b"IDAT", idat + compressor.flush()), (b"IEND", b"")]
    return signature + b"".join(png_chunk(kind, data) for kind, data in chunks)


def huge_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def huge_nifti(shape: tuple[int, int, int]) -> bytes:
    """A NIfTI-1 header declaring ``shape`` (and no data)."""
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    image.header.set_data_shape(shape)
    return image.header.binaryblock + bytes(4)


def huge_dicom(rows: int, columns: int, tmp_path) -> bytes:
    dataset = dicom_dataset(np.zeros((4, 4), np.uint16), spacing=(1.0, 1.0))
    dataset.Rows, dataset.Columns = rows, columns
    dataset.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    return (tmp_path / "huge.dcm").read_bytes()


def segment(http: httpx.Client, data: bytes, **kwargs) -> httpx.Response:
    form = {"labels": "polyp"}
    return http.post("/v1/segment", files={"file": ("x", data)}, data=form, **kwargs)


# --- 1. sizes past Pillow's ceiling -------------------------------------------------------


def test_crafted_files_are_real_and_past_pillows_ceiling():
    png = huge_png(HUGE, HUGE)
    assert len(png) < 200_000
    assert PngImagePlugin.PngImageFile(io.BytesIO(png)).size == (HUGE, HUGE)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(huge_jpeg(HUGE, HUGE)))


def test_huge_declared_sizes_are_413(client, tmp_path):
    """PNG and JPEG were 422 (Pillow's DecompressionBombError); every format is now 413."""
    uploads = {
        "png": huge_png(HUGE, HUGE),
        "jpeg": huge_jpeg(HUGE, HUGE),
        "nifti": huge_nifti((HUGE, HUGE, HUGE)),
        "dicom": huge_dicom(HUGE, HUGE, tmp_path),
    }
    for kind, data in uploads.items():
        response = segment(client, data)
        assert response.status_code == 413, (kind, response.text)
        detail = response.json()["detail"]
        assert f"{HUGE} x {HUGE}" in detail and "over the limit of" in detail, detail
        if kind in ("png", "jpeg", "dicom"):
            assert "900,000,000 pixels" in detail and "1,000,000 pixels" in detail


def test_pillows_ceiling_is_the_limit_when_max_pixels_is_higher(tmp_path):
    (tmp_path / "upload").write_bytes(huge_png(HUGE, HUGE))
    settings = ServerSettings(max_pixels=10**12)
    with pytest.raises(Exception, match="decoder's limit of 178,956,970 pixels") as error:
        identify_upload(tmp_path, settings)
    assert error.value.status == 413


# --- 2. slow and greedy clients -----------------------------------------------------------


@contextmanager
def open_sockets(port: int, count: int, request: bytes, source: str = LOOPBACK) -> Iterator[list]:
    """``count`` connections from ``source`` that each send ``request`` and idle; closed after."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((LOOPBACK, port), 5, source_address=(source, 0))
            opened.append(sock)
            with suppress(OSError):  # the server may have refused it already
                sock.sendall(request)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def answered(sockets: list[socket.socket], want: int, timeout: float) -> list[bytes]:
    """What the server sent on each socket that it answered or closed, waiting (bounded)
    until ``want`` of them did."""
    answers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        while len(answers) < want and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                try:
                    answers[key.fileobj] = key.fileobj.recv(4096)
                except OSError:
                    answers[key.fileobj] = b""
                selector.unregister(key.fileobj)
    return list(answers.values())


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """(everything the server sent, seconds until it closed); bounded by ``timeout``."""
    sock.settimeout(timeout)
    tic, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return data, float("inf")
    except OSError:
        pass
    return data, time.monotonic() - tic


def test_slow_clients_do_not_starve_the_others(make_server):
    """300 half-sent requests from one address took all of uvicorn's 256 places: /healthz was
    503 for everyone. Now that address holds at most its cap and the others are served."""
    running = make_server()
    cap = ServerSettings().max_client_connections
    partial = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0"
    with open_sockets(running.port, 300, partial) as slow:
        refused = answered(slow, want=300 - cap, timeout=5)
        with httpx.Client(
            base_url=running.url, transport=httpx.HTTPTransport(local_address=OTHER_CLIENT)
        ) as other:
            tic = time.monotonic()
            health = other.get("/healthz", timeout=5)
            seconds = time.monotonic() - tic
        assert health.status_code == 200 and seconds < 3, (health.status_code, health.text)
        assert len(refused) == 300 - cap
        assert all(answer.startswith(b"HTTP/1.1 429") for answer in refused)
        assert b"too many open connections" in refused[0]
        with open_sockets(running.port, 1, b"") as same_client:
            assert answered(same_client, want=1, timeout=5)[0].startswith(b"HTTP/1.1 429")
    deadline = time.monotonic() + 5  # the slow sockets are closed: room again
    while httpx.get(f"{running.url}/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the client's connections were not released"
        time.sleep(0.05)


def test_request_heads_have_a_deadline(make_server):
    running = make_server(header_timeout_s=1.0)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with open_sockets(running.port, 1, b"") as silent, open_sockets(running.port, 1, head) as half:
        data, seconds = read_until_closed(silent[0], timeout=5)
        assert data == b"" and 0.5 < seconds < 3  # never sent a byte: closed, no answer
        data, seconds = read_until_closed(half[0], timeout=5)
        assert data.startswith(b"HTTP/1.1 408") and seconds < 3
    with open_sockets(running.port, 1, b"G") as trickle:  # a byte every 0.25 s: no reprieve
        tic = time.monotonic()
        for byte in b"ET /healthz HTTP/1.1\r\nHost":
            if select.select(trickle, [], [], 0.25)[0]:  # answered: stop sending
                break
            trickle[0].sendall(bytes([byte]))
        data, _ = read_until_closed(trickle[0], timeout=5)
        assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - tic < 3


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length (head and body may arrive in
    separate segments), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert len(body) == length, "more than one response arrived"
    return head + b"\r\n\r\n" + body


def test_the_head_deadline_restarts_per_request_and_spares_slow_bodies(make_server):
    running = make_server(header_timeout_s=1.0)
    whole = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with open_sockets(running.port, 1, whole) as keep_alive:
        sock = keep_alive[0]
        sock.settimeout(5)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle between requests: uvicorn's keep-alive (5 s) still holds it
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        data, seconds = read_until_closed(sock, timeout=5)
        assert data.startswith(b"HTTP/1.1 408") and seconds < 3
    request = httpx.Request(
        "POST",
        f"{running.url}/v1/segment",
        files={"file": ("x", random_png(40))},
        data={"labels": "polyp"},
    )
    body = request.read()

    def slowly() -> Iterator[bytes]:
        for start in range(0, len(body), len(body) // 3 + 1):
            time.sleep(0.5)  # the body takes 1.5 s: past the head deadline
            yield body[start : start + len(body) // 3 + 1]

    headers = {"content-type": request.headers["content-type"]}
    response = httpx.post(request.url, content=slowly(), headers=headers, timeout=30)
    assert response.status_code == 200, response.text


# --- 3. Host and Origin -------------------------------------------------------------------


def test_foreign_host_names_are_400(client, server):
    for host in ("127.0.0.1", "localhost", "[::1]"):
        assert client.get("/healthz", headers={"Host": f"{host}:{server.port}"}).status_code == 200
    response = client.get("/healthz", headers={"Host": f"rebind.example:{server.port}"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "rebind.example" in detail and "--allowed-host rebind.example" in detail
    assert response.headers["x-frame-options"] == "DENY"  # still the security headers


def test_cross_origin_posts_are_403(client, server, encoder_calls):
    foreign = {"Origin": "http://evil.example"}
    response = segment(client, random_png(41), headers=foreign)
    assert response.status_code == 403 and "--allow-origin" in response.json()["detail"]
    assert client.delete("/v1/jobs/0123", headers=foreign).status_code == 403
    assert encoder_calls == [], "a refused request reached the model"
    page = client.get("/healthz", headers=foreign)  # reading: allowed, but no CORS headers
    assert page.status_code == 200 and "access-control-allow-origin" not in page.headers
    assert segment(client, random_png(41), headers={"Origin": server.url}).status_code == 200
    other_port = {"Origin": f"http://127.0.0.1:{server.port + 1}"}
    assert segment(client, random_png(41), headers=other_port).status_code == 403


def test_allowed_hosts_and_origins(make_server):
    running = make_server(allowed_hosts=("SSAM.lab",), allowed_origins=("http://viewer.lab:3000/",))
    viewer = {"Origin": "http://viewer.lab:3000"}
    with httpx.Client(base_url=running.url, timeout=30) as http:
        assert http.get("/healthz", headers={"Host": "ssam.lab"}).status_code == 200
        assert http.get("/healthz", headers={"Host": "other.lab"}).status_code == 400
        response = segment(http, random_png(42), headers=viewer)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://viewer.lab:3000"
        preflight = http.options(
            "/v1/segment", headers={**viewer, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["access-control-allow-methods"]
        other = segment(http, random_png(42), headers={"Origin": "http://other.lab"})
        assert other.status_code == 403


def test_host_and_origin_settings_are_validated():
    assert normalise_host(" [::1] ") == "::1" and normalise_host("Lab.Example.") == "lab.example"
    assert normalise_origin("HTTP://Viewer.lab:3000/") == "http://viewer.lab:3000"
    for bad in ("http://lab", "lab:8000", "", "a/b"):
        with pytest.raises(ValueError):
            normalise_host(bad)
    for bad in ("viewer.lab", "ftp://viewer.lab", "http://viewer.lab/page"):
        with pytest.raises(ValueError):
            normalise_origin(bad)
    settings = ServerSettings(allowed_hosts=("lab", "LAB"))
    assert settings.host_names == ("127.0.0.1", "localhost", "::1", "lab")


def test_serve_refuses_a_bad_allowed_host(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "1", "--allowed-host", "http://lab/"])
    assert exit_info.value.code == 2 and "not a host name" in capsys.readouterr().err
