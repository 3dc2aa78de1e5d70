"""Fixtures for service tests: tiny models, settings, an in-process client, images."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.model_factory import write_model


def png_bytes(size: int = 64, seed: int = 0) -> bytes:
    """A small 8-bit grayscale PNG with some structure (not blank)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    pixels = (x * 3 + y + rng.integers(0, 40, (size, size))) % 256

    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")

    return buffer.getvalue()


def jpeg_bytes(size: int = 64) -> bytes:
    """A small grayscale JPEG."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(size))).save(buffer, format="JPEG", quality=90)

    return buffer.getvalue()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny valid vlkd model (logits + features), shared by the session."""
    return write_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture
def make_settings(model_path: Path) -> Callable[..., Settings]:
    """Settings on the tiny model, with any field overridden."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_path": model_path,
            "intra_op_threads": 1,
            "decoder_self_test": False,  # 0.9 s a start; tested once on its own
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) with overridden settings; closed after."""
    clients: list[TestClient] = []

    def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
        client = TestClient(
            create_app(make_settings(**overrides)),
            raise_server_exceptions=raise_server_exceptions,
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make

    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """An app on the tiny model with default limits."""
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., str]]:
    """Run the app under a real uvicorn on loopback in a thread; yields its URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: Any) -> str:
        port = free_port()
        config = uvicorn.Config(
            create_app(make_settings(**overrides)),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 10 s"
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start

    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
