"""The service opens no outbound connection while starting and answering."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.conftest import png_bytes


def is_loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):  # unix sockets and the like stay local
        return True
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already go outside


def test_no_outbound_connection(
    live_server: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    shared_data: Path,
) -> None:
    """Start-up and every route run with connects to non-loopback hosts forbidden."""
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if not is_loopback(address):
            attempts.append(f"connect {address!r}")
            raise OSError("outbound connection blocked by test")
        return real_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        if not is_loopback(address):
            attempts.append(f"connect_ex {address!r}")
            raise OSError("outbound connection blocked by test")
        return real_connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not is_loopback(host):
            attempts.append(f"getaddrinfo {host!r}")
            raise OSError("name resolution blocked by test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)

    url = live_server()
    dicom = (shared_data / "dicom" / "RG1_J2KR.dcm").read_bytes()
    with httpx.Client(base_url=url, timeout=30) as client:
        statuses = [
            client.post(
                "/v1/classify",
                content=png_bytes(),
                headers={"content-type": "image/png"},
            ).status_code,
            client.post(
                "/v1/classify",
                content=dicom,
                headers={"content-type": "application/dicom"},
            ).status_code,
            client.post(
                "/v1/classify/batch",
                files=[("files", ("a.png", png_bytes(), "image/png"))],
            ).status_code,
            client.get("/v1/model").status_code,
            client.get("/docs").status_code,
            client.get("/openapi.json").status_code,
            client.get("/metrics").status_code,
            client.get("/readyz").status_code,
        ]

    assert statuses == [200] * len(statuses)
    assert attempts == []


def test_guard_catches_outside_address() -> None:
    """The loopback test itself tells inside from outside addresses."""
    assert is_loopback(("127.0.0.1", 80))
    assert is_loopback(("::1", 80, 0, 0))
    assert not is_loopback(("10.0.0.1", 80))
    assert not is_loopback("example.org")
