"""Read an upload from the request stream without ever trusting its size.

Two shapes are accepted:

* a raw body whose ``Content-Type`` is ``application/dicom``, ``image/png``,
  ``image/jpeg`` (or ``application/octet-stream``: the decoder sniffs it);
* ``multipart/form-data`` with the image(s) in one named field (``file`` or
  ``files``).

Every limit is checked on the bytes actually read, chunk by chunk, so a chunked
body with no ``Content-Length``, or one that lies about it, stops at the limit
instead of being buffered. A declared ``Content-Length`` over the limit is
refused before reading. Multipart is parsed as it streams (python-multipart's
push parser) with caps on the number of parts, the non-file fields and their
size, part headers, the bytes before the first boundary, and a strict check of
the boundary itself (RFC 2046: 1-70 characters from a fixed set).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import (
    InputError,
    PayloadTooLargeError,
    UnprocessableImageError,
    UnsupportedMediaError,
)
from app.settings import Settings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

RAW_MEDIA_TYPES = frozenset(
    {"application/dicom", "image/png", "image/jpeg", "application/octet-stream"}
)
MULTIPART = "multipart/form-data"
MAX_PREAMBLE_BYTES = 64 * 1024  # bytes allowed before the first part starts
# RFC 2046 section 5.1.1: bchars, 1-70 of them, not ending with a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_EXPECTED = (
    "expected multipart/form-data or a raw body with Content-Type "
    "application/dicom, image/png or image/jpeg"
)


@dataclass
class Upload:
    """One uploaded image: its bytes and the media type the client declared."""

    data: bytes
    media_type: str | None


def _declared_length(request: Request, limit: int) -> None:
    """Refuse at once a body whose declared Content-Length is over ``limit``."""
    raw = request.headers.get("content-length")
    if raw is None:
        return
    if not raw.isdigit():
        raise InputError("Content-Length is not a number")
    if int(raw) > limit:
        raise PayloadTooLargeError(
            f"upload of {int(raw)} bytes is over the limit of {limit} bytes"
        )


async def _chunks(request: Request, timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; a stalled or vanished client ends the request."""
    stream = request.stream().__aiter__()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(remaining, 0.001))
        except StopAsyncIteration:
            return
        except TimeoutError as error:
            raise InputError(f"upload not received within {timeout_s:g} s") from error
        except ClientDisconnect as error:
            raise InputError("client disconnected during the upload") from error
        if chunk:
            yield chunk


async def read_raw(request: Request, settings: Settings) -> bytes:
    """The whole raw body, refused with 413 as soon as it passes the limit."""
    limit = settings.max_upload_bytes
    _declared_length(request, limit)

    parts: list[bytes] = []
    total = 0
    async for chunk in _chunks(request, settings.body_timeout_s):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"upload is over the limit of {limit} bytes")
        parts.append(chunk)

    return b"".join(parts)


class _MultipartCollector:
    """python-multipart callbacks that keep the wanted files and enforce the caps."""

    def __init__(self, field: str, settings: Settings) -> None:
        self.field = field
        self.settings = settings
        self.files: list[Upload] = []
        self.parts = 0
        self.fields = 0
        self.finished = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._data: list[bytes] = []
        self._size = 0
        self._is_file = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.settings.max_parts:
            raise PayloadTooLargeError(
                f"multipart body has more than {self.settings.max_parts} parts"
            )
        self._headers = {}
        self._data = []
        self._size = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(
            self._headers.get("content-disposition", b"")
        )
        if disposition != b"form-data" or b"name" not in options:
            raise InputError("multipart part has no form-data name")

        self._is_file = options[b"name"].decode("latin-1") == self.field
        if not self._is_file and b"filename" in options:
            raise UnprocessableImageError(
                f"expected the image in multipart field '{self.field}'; "
                "a file was sent in another field"
            )
        if self._is_file:
            if len(self.files) >= self.settings.max_batch_images:
                raise PayloadTooLargeError(
                    f"more than {self.settings.max_batch_images} images in one request"
                )
            return

        self.fields += 1
        if self.fields > self.settings.max_form_fields:
            raise PayloadTooLargeError(
                f"multipart body has more than {self.settings.max_form_fields} "
                "fields besides the image(s)"
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._is_file:
            if self._size > self.settings.max_upload_bytes:
                raise PayloadTooLargeError(
                    f"an image is over the limit of {self.settings.max_upload_bytes} "
                    "bytes"
                )
            self._data.append(data[start:end])
        elif self._size > self.settings.max_field_bytes:
            raise PayloadTooLargeError(
                f"a form field is over the limit of {self.settings.max_field_bytes} "
                "bytes"
            )

    def on_part_end(self) -> None:
        if self._is_file:
            media, _ = parse_options_header(self._headers.get("content-type", b""))
            media_type = media.decode("latin-1").lower() or None
            self.files.append(Upload(b"".join(self._data), media_type))
        self._data = []

    def on_end(self) -> None:
        self.finished = True


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a multipart Content-Type; 400 unless RFC 2046-valid."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    try:
        text = boundary.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not _BOUNDARY.match(text):
        raise InputError(
            "multipart boundary missing or invalid (RFC 2046: 1-70 letters, "
            "digits or '()+_,-./:=? )"
        )

    return boundary


async def read_multipart(
    request: Request, settings: Settings, field: str
) -> list[Upload]:
    """The files of multipart ``field``, parsed while streaming, caps enforced."""
    boundary = multipart_boundary(request.headers.get("content-type", ""))
    limit = settings.max_request_bytes
    _declared_length(request, limit)

    collector = _MultipartCollector(field, settings)
    parser = MultipartParser(
        boundary, collector.callbacks(), max_header_count=8, max_header_size=4096
    )
    total = 0
    try:
        async for chunk in _chunks(request, settings.body_timeout_s):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(
                    f"request is over the limit of {limit} bytes"
                )
            parser.write(chunk)
            if collector.parts == 0 and total > MAX_PREAMBLE_BYTES:
                raise InputError(
                    f"no multipart part within the first {MAX_PREAMBLE_BYTES} bytes"
                )
        parser.finalize()
    except FormParserError as error:
        raise InputError("malformed multipart body") from error

    if not collector.finished:
        raise InputError("multipart body ended before its closing boundary")

    return collector.files


async def read_uploads(
    request: Request, settings: Settings, field: str
) -> list[Upload]:
    """Every image in the request: the raw body, or multipart field ``field``."""
    content_type = request.headers.get("content-type", "")
    media, _ = parse_options_header(content_type)
    media_type = media.decode("latin-1").lower()

    if media_type == MULTIPART:
        uploads = await read_multipart(request, settings, field)
        if not uploads:
            raise UnprocessableImageError(f"multipart field {field!r} is missing")
    elif media_type in RAW_MEDIA_TYPES:
        uploads = [Upload(await read_raw(request, settings), media_type)]
    else:
        raise UnsupportedMediaError(_EXPECTED)

    return uploads
