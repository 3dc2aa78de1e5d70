"""Settings: read from VLKD_* variables, unsafe values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import DEFAULT_MODEL_PATH, REPO_ROOT, Settings, first_error


def test_defaults_are_loopback_and_bundled_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no variables set the service binds loopback and serves the bundled model."""
    for name in ("VLKD_HOST", "VLKD_MODEL_PATH", "VLKD_PORT", "VLKD_API_KEYS"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.model_path == DEFAULT_MODEL_PATH
    assert settings.api_keys == []


def test_environment_overrides_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """VLKD_ variables set the fields; a comma list becomes the API keys."""
    monkeypatch.setenv("VLKD_PORT", "9123")
    monkeypatch.setenv("VLKD_API_KEYS", "k" * 16 + ", " + "z" * 20)
    monkeypatch.setenv("VLKD_MODEL_PATH", "models/other.onnx")

    settings = Settings()

    assert settings.port == 9123
    assert settings.api_keys == ["k" * 16, "z" * 20]
    assert settings.model_path == REPO_ROOT / "models" / "other.onnx"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_keys", "short"),
        ("model_sha256", "not-a-hash"),
        ("port", 0),
        ("workers", 0),
        ("max_upload_bytes", 10),
        ("max_queue", 0),
        ("log_level", "CHATTY"),
    ],
)
def test_unsafe_values_refused(field: str, value: object, tmp_path: Path) -> None:
    """Weak keys, malformed pins and out-of-range limits fail validation."""
    with pytest.raises(ValidationError) as caught:
        Settings(**{field: value})  # type: ignore[arg-type]

    assert field in first_error(caught.value).lower()


def test_request_limit_below_image_limit_refused() -> None:
    """A body limit smaller than the per-image limit is inconsistent and refused."""
    with pytest.raises(ValidationError):
        Settings(max_upload_bytes=10_000_000, max_request_bytes=1_000_000)


def test_sha256_pin_normalised() -> None:
    """An upper-case sha256 pin is accepted and stored lower-case."""
    settings = Settings(model_sha256="AB" * 32)

    assert settings.model_sha256 == "ab" * 32


def test_empty_variable_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty VLKD_ variable (as compose passes an unset one) keeps the default."""
    monkeypatch.setenv("VLKD_INTRA_OP_THREADS", "")
    monkeypatch.setenv("VLKD_PORT", "")

    settings = Settings()

    assert settings.intra_op_threads is None
    assert settings.port == 8000
