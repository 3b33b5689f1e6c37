"""Fixtures of the web tests: one tiny adapted model, servers on loopback, encoder hooks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from browser import launch_browser, open_page
from web_helpers import TINY_SIZE, WEB_LABELS, default_settings

from ssam.config.model import ModelConfig
from ssam.factory import create_model
from ssam.inference.predictor import SSAMPredictor
from ssam.tuning.adapter import save_adapter
from ssam.web.app import create_app
from ssam.web.server import BackgroundServer


@pytest.fixture(scope="session")
def web_adapter(tiny_checkpoint, tmp_path_factory) -> Path:
    """A tiny model's adapter trained on nothing, naming the labels polyp and lung."""
    folder = tmp_path_factory.mktemp("web-adapter")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSAM_CACHE", str(folder / "cache"))
        torch.manual_seed(0)
        config = ModelConfig(
            variant="tiny",
            image_size=TINY_SIZE,
            sam_checkpoint=tiny_checkpoint,
            text_encoder="tiny",
            allow_download=False,
        )
        return save_adapter(create_model(config), folder / "adapter.safetensors", labels=WEB_LABELS)


@pytest.fixture(scope="session")
def web_predictor(web_adapter, tiny_checkpoint, tmp_path_factory) -> SSAMPredictor:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSAM_CACHE", str(tmp_path_factory.mktemp("web-cache")))
        return SSAMPredictor.from_adapter(web_adapter, tiny_checkpoint, batch_size=2)


@pytest.fixture(scope="session")
def upload_root(tmp_path_factory) -> Path:
    """Parent of the servers' per-request temporary folders."""
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="session")
def server(web_predictor, upload_root) -> Iterator[BackgroundServer]:
    """The shared server: the tiny model under small limits."""
    app = create_app(web_predictor, default_settings(upload_root), {"adapter": "tiny"})
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture()
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture()
def make_server(web_predictor, upload_root) -> Iterator[Callable[..., BackgroundServer]]:
    """Start an extra server on the shared model with changed settings (stopped after)."""
    started: list[BackgroundServer] = []

    def start(**changes) -> BackgroundServer:
        app = create_app(web_predictor, default_settings(upload_root, **changes))
        started.append(BackgroundServer(app).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture()
def encoder_calls(web_predictor) -> Iterator[list[int]]:
    """Batch sizes of every image-encoder call while the test runs."""
    calls: list[int] = []
    hook = web_predictor.model.image_encoder.register_forward_hook(
        lambda module, inputs, output: calls.append(int(inputs[0].shape[0]))
    )
    yield calls
    hook.remove()


@pytest.fixture()
def blocked_encoder(web_predictor) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(entered, release): the encoder sets ``entered`` and waits for ``release``."""
    entered, release = threading.Event(), threading.Event()

    def wait(module, inputs):
        entered.set()
        release.wait(timeout=30)

    hook = web_predictor.model.image_encoder.register_forward_pre_hook(wait)
    yield entered, release
    release.set()
    hook.remove()


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory) -> Iterator:
    """Headless Chromium (``browser.launch_browser``), shared by the page's tests."""
    yield from launch_browser(tmp_path_factory)


@pytest.fixture()
def page(browser_context, server) -> Iterator:
    """A fresh page on the shared server; any script error fails the test."""
    yield from open_page(browser_context, server)
