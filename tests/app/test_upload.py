"""Upload limits and multipart abuse (issue 6, items 11-13)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InputError
from app.upload import MAX_PREAMBLE_BYTES, multipart_boundary
from tests.app.conftest import jpeg_bytes, png_bytes

MIB = 1024 * 1024
BOUNDARY = "vlkdtestboundary"


def asgi_post(
    client: TestClient, path: str, headers: dict[str, str], chunks: Iterator[bytes]
) -> tuple[int, dict[str, Any], int]:
    """POST ``chunks`` straight into the app; returns status, JSON, bytes it read."""
    consumed = 0
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def call() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    client.portal.call(call)  # type: ignore[union-attr]
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(
        m.get("body", b"") for m in messages if m["type"] == "http.response.body"
    )

    return status, json.loads(body), consumed


def endless(chunk: bytes, total: int) -> Iterator[bytes]:
    """Yield ``chunk`` until ``total`` bytes would have been sent (lazily)."""
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


def multipart_head(name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename:
        disposition += f'; filename="{filename}"'
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


MULTIPART_HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_raw_upload_over_limit_refused_from_content_length(client: TestClient) -> None:
    """A declared Content-Length over the limit gets 413 before any byte is read."""
    headers = {"content-type": "image/png", "content-length": str(2 * 1024 * MIB)}

    status, body, consumed = asgi_post(
        client, "/v1/classify", headers, endless(b"\0" * MIB, 2 * 1024 * MIB)
    )

    assert status == 413
    assert consumed == 0
    assert "limit" in body["detail"]


def test_chunked_raw_upload_stops_at_limit_without_content_length(
    make_client: Callable[..., TestClient],
) -> None:
    """A 2 GB chunked body with no Content-Length is cut off just past the limit."""
    client = make_client(max_upload_bytes=4 * MIB, max_request_bytes=4 * MIB)

    status, body, consumed = asgi_post(
        client,
        "/v1/classify",
        {"content-type": "application/dicom"},
        endless(b"\0" * (256 * 1024), 2 * 1024 * MIB),
    )

    assert status == 413
    assert 4 * MIB < consumed <= 4 * MIB + 256 * 1024
    assert body["request_id"]


def test_two_gigabyte_file_part_stops_at_limit(
    make_client: Callable[..., TestClient],
) -> None:
    """A multipart file part that would be 2 GB gets 413 after the per-image limit."""
    client = make_client(max_upload_bytes=2 * MIB, max_request_bytes=8 * MIB)
    chunks = iter([multipart_head("file", "x.dcm")])
    body_chunks = endless(b"\xff" * (256 * 1024), 2 * 1024 * MIB)

    status, body, consumed = asgi_post(
        client, "/v1/classify", MULTIPART_HEADERS, _chain(chunks, body_chunks)
    )

    assert status == 413
    assert consumed < 3 * MIB
    assert "image" in body["detail"]


def test_huge_text_field_refused_at_field_limit(client: TestClient) -> None:
    """A 200 MB text field gets 413 once it passes the 16 KiB field limit."""
    chunks = _chain(iter([multipart_head("comment")]), endless(b"a" * 65536, 200 * MIB))

    status, body, consumed = asgi_post(
        client, "/v1/classify", MULTIPART_HEADERS, chunks
    )

    assert status == 413
    assert consumed <= 2 * 65536 + 1024
    assert "field" in body["detail"]


def test_thousand_and_one_parts_refused(client: TestClient) -> None:
    """1001 small file parts get 413 at the part cap, not after reading them all."""
    part = multipart_head("files", "a.png") + png_bytes(8) + b"\r\n"
    total_parts = 1001

    def parts() -> Iterator[bytes]:
        for _ in range(total_parts):
            yield part
        yield f"--{BOUNDARY}--\r\n".encode()

    status, body, consumed = asgi_post(
        client, "/v1/classify/batch", MULTIPART_HEADERS, parts()
    )

    assert status == 413
    assert consumed < 30 * len(part)
    assert "images" in body["detail"] or "parts" in body["detail"]


def test_too_many_fields_refused(client: TestClient) -> None:
    """More small non-file fields than allowed get 413."""
    fields = [("f", (None, "x")) for _ in range(20)]
    files = [("file", ("x.png", png_bytes(), "image/png"))]

    response = client.post("/v1/classify", files=files + fields)  # type: ignore[arg-type]

    assert response.status_code == 413
    assert "fields" in response.json()["detail"]


def test_long_crlf_preamble_refused_quickly(client: TestClient) -> None:
    """10 MB of CR LF before the first boundary gets 4xx within a second."""
    chunks = endless(b"\r\n" * 32768, 10 * MIB)

    started = time.perf_counter()
    status, _, consumed = asgi_post(client, "/v1/classify", MULTIPART_HEADERS, chunks)
    elapsed = time.perf_counter() - started

    assert 400 <= status < 500
    assert elapsed < 1.0
    assert consumed <= MAX_PREAMBLE_BYTES + 65536


def test_backslash_boundary_refused_quickly(client: TestClient) -> None:
    """A boundary made of 5000 backslashes gets 400 within a second."""
    headers = {"content-type": "multipart/form-data; boundary=" + "\\" * 5000}

    started = time.perf_counter()
    response = client.post("/v1/classify", content=b"\\" * 100_000, headers=headers)
    elapsed = time.perf_counter() - started

    assert response.status_code == 400
    assert elapsed < 1.0
    assert "boundary" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        'multipart/form-data; boundary=""',
        "multipart/form-data; boundary=" + "a" * 71,
        'multipart/form-data; boundary="abc "',
    ],
)
def test_invalid_boundary_rejected(content_type: str) -> None:
    """Missing, empty, too long or space-ending boundaries are refused."""
    with pytest.raises(InputError) as caught:
        multipart_boundary(content_type)

    assert caught.value.status_code == 400


def test_empty_upload_rejected(client: TestClient) -> None:
    """A 0-byte raw upload gets 422 naming the problem."""
    response = client.post(
        "/v1/classify", content=b"", headers={"content-type": "image/png"}
    )

    assert response.status_code == 422
    assert "empty" in response.json()["detail"]


def test_truncated_jpeg_rejected(client: TestClient) -> None:
    """A JPEG cut at 50 % is rejected with a 4xx, never classified."""
    data = jpeg_bytes(128)

    response = client.post(
        "/v1/classify",
        content=data[: len(data) // 2],
        headers={"content-type": "image/jpeg"},
    )

    assert 400 <= response.status_code < 500
    assert "label" not in response.json()


def test_missing_content_type_gets_415(client: TestClient) -> None:
    """A body with no usable Content-Type gets 415 listing what is accepted."""
    response = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "text/plain"}
    )

    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_multipart_without_file_field_gets_422(client: TestClient) -> None:
    """A multipart body with no ``file`` field gets 422 naming the field."""
    response = client.post(
        "/v1/classify", files={"image": ("x.png", png_bytes(), "image/png")}
    )

    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]


def test_file_in_wrong_field_named_in_error(client: TestClient) -> None:
    """A file sent as ``files`` to the single route names the expected field."""
    response = client.post(
        "/v1/classify", files={"files": ("x.png", png_bytes(), "image/png")}
    )

    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]
    assert "over the limit" not in response.json()["detail"]


def test_unterminated_multipart_gets_400(client: TestClient) -> None:
    """A multipart body that ends before its closing boundary gets 400."""
    body = multipart_head("file", "x.png") + png_bytes()

    response = client.post("/v1/classify", content=body, headers=MULTIPART_HEADERS)

    assert response.status_code == 400


def test_chunked_upload_under_limit_classifies(live_server: Callable[..., str]) -> None:
    """A real chunked upload with no Content-Length is read and classified."""
    url = live_server()
    data = png_bytes(96)

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    response = httpx.post(
        f"{url}/v1/classify", content=body(), headers={"content-type": "image/png"}
    )

    assert response.status_code == 200
    assert response.json()["label"] is not None


def test_attacks_answered_while_healthz_answers(
    live_server: Callable[..., str],
) -> None:
    """Attack bodies on raw sockets get 4xx within 1 s; /healthz keeps answering."""
    url = live_server()
    host = urlparse(url)
    attacks = [
        "multipart/form-data; boundary=" + "\\" * 4000,
        f"multipart/form-data; boundary={BOUNDARY}",
    ]

    for content_type in attacks:
        with socket.create_connection((host.hostname, host.port), timeout=5) as sock:
            sock.sendall(
                (
                    "POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: {content_type}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"
                ).encode()
            )
            started = time.perf_counter()
            payload = b"\r\n" * (512 * 1024)
            try:
                for _ in range(10):  # up to 10 MB of CR LF
                    sock.sendall(b"%x\r\n" % len(payload) + payload + b"\r\n")
            except OSError:
                pass  # the server answered and closed: expected
            reply = sock.recv(4096)
            elapsed = time.perf_counter() - started
            health = httpx.get(f"{url}/healthz", timeout=2)

            assert reply.startswith(b"HTTP/1.1 4")
            assert elapsed < 1.0
            assert health.status_code == 200


def _chain(*iterators: Iterator[bytes]) -> Iterator[bytes]:
    for iterator in iterators:
        yield from iterator


def read_http_reply(sock: socket.socket) -> bytes:
    """Read one whole HTTP reply: the head, then ``Content-Length`` body bytes.

    Headers and body may arrive in separate packets, so one ``recv`` is not
    enough; stops early if the server closes the connection.
    """
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            return reply
        reply += chunk

    head, _, body = reply.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk

    return head + b"\r\n\r\n" + body


def test_stalled_upload_times_out(live_server: Callable[..., str]) -> None:
    """A body that stops arriving gets 400 after VLKD_BODY_TIMEOUT_S, not a hang."""
    url = urlparse(live_server(body_timeout_s=0.5))

    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\x89PNG" * 10
        )
        started = time.perf_counter()
        reply = read_http_reply(sock)
        elapsed = time.perf_counter() - started

    assert reply.startswith(b"HTTP/1.1 400")
    assert b"not received within" in reply
    assert elapsed < 3.0


_CONTENT_TYPES = st.sampled_from(
    [
        f"multipart/form-data; boundary={BOUNDARY}",
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "image/png",
        "application/dicom",
        "image/jpeg; charset=x",
        "",
        "text/plain",
    ]
)
_PIECES = st.sampled_from(
    [
        f"--{BOUNDARY}\r\n".encode(),
        f"--{BOUNDARY}--\r\n".encode(),
        b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n',
        b'Content-Disposition: form-data; name="files"\r\n',
        b"Content-Disposition: attachment\r\n",
        b"Content-Type: image/png\r\n",
        b"\r\n",
        b"\x89PNG\r\n\x1a\n",
        b"DICM",
        b":" * 10,
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    content_type=_CONTENT_TYPES,
    pieces=st.lists(st.one_of(_PIECES, st.binary(max_size=64)), max_size=12),
    path=st.sampled_from(["/v1/classify", "/v1/classify/batch"]),
)
def test_random_bodies_never_get_5xx(
    client: TestClient, content_type: str, pieces: list[bytes], path: str
) -> None:
    """Random and half-valid bodies always get a 2xx or a 4xx with a detail."""
    response = client.post(
        path, content=b"".join(pieces), headers={"content-type": content_type}
    )

    assert response.status_code < 500
    if response.status_code >= 400:
        assert response.json()["detail"]
