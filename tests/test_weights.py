"""Official files are downloaded only when missing, and kept only if their SHA-256 matches.

A real HTTP server on loopback serves a fake checkpoint; nothing leaves the machine.
"""

import hashlib
import socket
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest

from ssam.errors import CheckpointError, DownloadError
from ssam.weights import WeightsFile, download_file, file_sha256, resolve_weights


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    payload = b"not really a checkpoint " * 5000
    (root / "sam_fake.pth").write_bytes(payload)
    httpd = HTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", payload
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_caches(server, tmp_path):
    base, payload = server
    official = WeightsFile(
        "sam_fake.pth", f"{base}/sam_fake.pth", hashlib.sha256(payload).hexdigest()
    )
    cache = tmp_path / "cache"
    path = resolve_weights(None, official, "SAM checkpoint", cache_dir=cache)
    assert path == cache / "weights" / "sam_fake.pth"
    assert path.read_bytes() == payload
    # second call: served from the cache even with downloads off
    assert resolve_weights(None, official, "SAM checkpoint", False, cache) == path
    assert file_sha256(path, cache) == official.sha256


def test_download_with_wrong_sha_leaves_nothing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "cache" / "weights" / "sam_fake.pth"
    with pytest.raises(DownloadError, match="does not match"):
        download_file(f"{base}/sam_fake.pth", dest, "0" * 64)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_unreachable_server_says_what_to_do(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="pass its path"):
        download_file(f"{base}/absent.pth", tmp_path / "x.pth", "0" * 64)


def test_offline_cache_miss_and_missing_path(tmp_path):
    official = WeightsFile("sam_x.pth", "http://127.0.0.1:9/sam_x.pth", "0" * 64)
    with pytest.raises(CheckpointError, match="downloads are off"):
        resolve_weights(None, official, "SAM checkpoint", False, tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_weights(tmp_path / "nope.pth", official, "SAM checkpoint")


def test_download_tries_the_proxy_first_and_names_the_flag(monkeypatch, tmp_path):
    """Behind a proxy the quick connect check goes to the proxy (not the unreachable host), and
    a failed download names the flag that takes the file and the cache folder to put it in."""
    proxy = socket.create_server(("127.0.0.1", 0))
    port = proxy.getsockname()[1]
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    dest = tmp_path / "cache" / "weights" / "sam.pth"
    with pytest.raises(DownloadError) as err:
        download_file("https://weights.invalid/sam.pth", dest, "0" * 64, timeout=1.0,
                      connect_timeout=1.0, flag="--sam-checkpoint")  # fmt: skip
    message = str(err.value)
    assert "--sam-checkpoint" in message and str(dest.parent) in message
    proxy.settimeout(0)
    connection, _ = proxy.accept()  # the proxy was reached (raises if nobody connected)
    connection.close()
    proxy.close()
    assert not dest.exists()


def test_closed_port_fails_at_the_connect_check(tmp_path):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connection refused
    with pytest.raises(DownloadError, match="Connection refused|refused"):
        download_file(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", "0" * 64)
