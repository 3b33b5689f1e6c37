"""``ssam serve`` as a user runs it, and the load test's smoke run against a live server."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from web_helpers import WEB_LABELS

from ssam.cli.main import main
from ssam.web.server import build_server, free_port

LOAD_TEST = Path(__file__).resolve().parents[2] / "bench" / "load_test.py"


def load_bench_module():
    spec = importlib.util.spec_from_file_location("load_test", LOAD_TEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_serve_command_starts_on_loopback(
    web_adapter, tiny_checkpoint, monkeypatch, capsys, tmp_path
):
    """``ssam serve`` through the CLI's own entry point (in a thread: a subprocess would pay
    the CLI's import time again), stopped through the uvicorn server it built; here from a
    package whose volume viewer was never built, which it says."""
    servers = []
    monkeypatch.setattr("ssam.web.app.VIEWER_DIR", tmp_path / "not-built")

    def recording_build_server(*args, **kwargs):
        servers.append(build_server(*args, **kwargs))
        return servers[-1]

    monkeypatch.setattr("ssam.web.server.build_server", recording_build_server)
    port = free_port()
    argv = ["serve", "--adapter", str(web_adapter), "--sam-checkpoint", str(tiny_checkpoint)]
    argv += ["--port", str(port), "--offline", "--queue-size", "1", "--log-level", "warning"]
    argv += ["--allowed-host", "ssam.lab", "--allow-origin", "http://viewer.lab:3000"]
    argv += ["--max-refine-points", "7", "--refine-undo-depth", "5"]
    codes = []

    def run_cli() -> None:
        try:
            main(argv)
        except SystemExit as exit_:  # Typer exits when the command returns
            codes.append(exit_.code)

    thread = threading.Thread(target=run_cli, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (servers and servers[0].started):
        assert thread.is_alive() and time.monotonic() < deadline, "ssam serve did not come up"
        time.sleep(0.05)
    try:
        assert servers[0].config.host == "127.0.0.1"
        settings = servers[0].config.app.state.services.settings
        assert (settings.max_refine_points, settings.refine_undo_depth) == (7, 5)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz").json()["queue"]["capacity"] == 2
        labels = httpx.get(f"{url}/v1/labels").json()
        assert labels["labels"] == WEB_LABELS and labels["model"]["variant"] == "tiny"
        assert labels["viewer"] is None
        assert httpx.get(f"{url}/healthz", headers={"Host": "ssam.lab"}).status_code == 200
        assert httpx.get(f"{url}/healthz", headers={"Host": "evil.lab"}).status_code == 400
        preflight = {"Origin": "http://viewer.lab:3000", "Access-Control-Request-Method": "POST"}
        assert httpx.options(f"{url}/v1/segment", headers=preflight).status_code == 200
    finally:
        servers[0].should_exit = True
        thread.join(20)
    assert not thread.is_alive() and codes in ([], [0])
    assert "volume viewer (NiiVue) is not built" in capsys.readouterr().err


def test_serve_needs_a_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "1"])
    assert exit_info.value.code == 2 and "--adapter" in capsys.readouterr().err


def test_load_test_quick_run(server, tmp_path):
    load_test = load_bench_module()
    out = tmp_path / "load.json"
    argv = ["--quick", "--duration", "2", "--url", server.url, "--out", str(out)]
    assert load_test.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["clients"] == 8 and report["ok"] > 0 and report["errors"] == 0
    assert report["latency_ms"]["p95"] >= report["latency_ms"]["p50"] > 0


def test_load_test_with_slow_clients(make_server, tmp_path):
    """300 half-sent requests from 127.0.0.2 while 2 clients post: /healthz stays 200."""
    load_test = load_bench_module()
    running = make_server(header_timeout_s=1.0)
    out = tmp_path / "slow.json"
    argv = ["--duration", "3", "--clients", "2", "--url", running.url, "--out", str(out)]
    assert load_test.main([*argv, "--slow-clients", "300"]) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["ok"] > 0
    health, slow = report["health"], report["slow_clients"]
    assert health["checks"] >= 5 and health["failures"] == 0 and health["max_ms"] < 2000
    assert slow["ended_by_server"]["429"] >= 300 - 32 and slow["ended_by_server"]["408"] > 0


def test_load_test_stays_on_loopback():
    load_test = load_bench_module()
    with pytest.raises(ValueError, match="loopback"):
        load_test.check_loopback("http://10.1.2.3:8000")
    assert load_test.check_loopback("http://127.0.0.1:9/") == "http://127.0.0.1:9"
