"""The service's settings: one class, read from ``VLKD_*`` environment variables.

Every value is validated when the service starts; a bad or unsafe value stops
start-up with a one-line reason (see ``app.__main__``). Sizes are in bytes,
durations in seconds.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_PATH = REPO_ROOT / "models" / "vlkd-student.onnx"

MIB = 1024 * 1024
MIN_API_KEY_LENGTH = 16
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Settings(BaseSettings):
    """Everything an operator can set; env prefix ``VLKD_``."""

    model_config = SettingsConfigDict(
        env_prefix="VLKD_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Model
    model_path: Path = DEFAULT_MODEL_PATH
    model_sha256: str | None = None  # optional pin: refuse any other file

    # Network and processes
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    graceful_shutdown_s: int = Field(default=20, ge=0, le=600)

    # CPU use: None means derived from the CPUs this process may really use
    intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    decode_threads: int | None = Field(default=None, ge=1, le=64)
    micro_batch: int = Field(default=1, ge=1, le=64)  # 1: no batching (measured)

    # Limits on input
    max_upload_bytes: int = Field(default=64 * MIB, ge=1024, le=1024 * MIB)  # one image
    max_request_bytes: int = Field(
        default=128 * MIB, ge=1024, le=4096 * MIB
    )  # one body
    max_pixels: int = Field(default=50_000_000, ge=64 * 64, le=400_000_000)
    max_batch_images: int = Field(default=16, ge=1, le=256)
    max_form_fields: int = Field(default=8, ge=0, le=64)  # non-file multipart fields
    max_field_bytes: int = Field(default=16 * 1024, ge=64, le=MIB)
    max_queue: int = Field(default=32, ge=1, le=10_000)  # requests admitted at once
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    retry_after_s: int = Field(default=1, ge=1, le=600)

    # Access and observability
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    docs_enabled: bool = True
    decoder_self_test: bool = True  # decode one tiny image per DICOM syntax at start

    @field_validator("model_path")
    @classmethod
    def _absolute_model_path(cls, value: Path) -> Path:
        """Resolve a relative path against the repository, not the caller's cwd."""
        return value if value.is_absolute() else (REPO_ROOT / value).resolve()

    @field_validator("model_sha256")
    @classmethod
    def _sha256_format(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.strip().lower()
        if not _SHA256.match(value):
            raise ValueError("must be 64 hexadecimal characters")

        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Accept a comma-separated list, as environment variables carry it."""
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]

        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[str]) -> list[str]:
        short = [key for key in keys if len(key) < MIN_API_KEY_LENGTH]
        if short:
            raise ValueError(
                f"every API key needs at least {MIN_API_KEY_LENGTH} characters; "
                f"{len(short)} key(s) are shorter"
            )

        return keys

    @model_validator(mode="after")
    def _consistent_limits(self) -> Settings:
        if self.max_request_bytes < self.max_upload_bytes:
            raise ValueError(
                "max_request_bytes must be at least max_upload_bytes "
                f"({self.max_request_bytes} < {self.max_upload_bytes})"
            )

        return self

    @property
    def max_parts(self) -> int:
        """Most multipart parts one request may carry (files plus fields)."""
        return self.max_batch_images + self.max_form_fields

    @property
    def auth_enabled(self) -> bool:
        """True when ``/v1/*`` requires an API key."""
        return bool(self.api_keys)


def first_error(error: Exception) -> str:
    """One line naming the first invalid setting, for start-up refusal."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        return f"invalid setting VLKD_{where.upper()}: {first.get('msg', error)}"

    return f"invalid settings: {error}"
