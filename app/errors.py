"""Every error vlkd raises on purpose, and the HTTP status each one maps to.

Hierarchy::

    VlkdError                       base; never raised directly
    ├── InputError                  the upload is at fault (4xx)
    │   ├── PayloadTooLargeError    413: bytes, pixels, parts or fields over a limit
    │   ├── UnsupportedMediaError   415: not PNG / JPEG / DICOM, or no decoder
    │   │                           for the DICOM transfer syntax
    │   └── UnprocessableImageError 422: recognised format, but unusable content
    │                               (no pixels, truncated, blank, multi-frame, ...)
    ├── ServiceBusyError            503: the inference queue is full
    └── ModelError                  the model file or its contract is unusable;
        │                           raised at start-up, the service refuses to start
        └── ContractError           metadata missing or inconsistent

Messages are short, human and safe to return to a client: they say what was
expected and what was received, and never contain pixel values, DICOM tags that
identify a patient, file names or library internals. Errors from third-party
libraries (Pillow, pydicom, onnxruntime) are converted to these types where they
enter vlkd's code.
"""

from __future__ import annotations


class VlkdError(Exception):
    """Base of every vlkd error; ``status_code`` is the HTTP status it maps to."""

    status_code: int = 500
    reason: str = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InputError(VlkdError):
    """The client's input cannot be classified; always a 4xx."""

    status_code = 400
    reason = "bad_request"


class PayloadTooLargeError(InputError):
    """Raised when bytes, pixels, frames, parts or fields exceed a limit."""

    status_code = 413
    reason = "too_large"


class UnsupportedMediaError(InputError):
    """Raised for a media type or DICOM transfer syntax vlkd cannot decode."""

    status_code = 415
    reason = "unsupported_media"


class UnprocessableImageError(InputError):
    """Raised when the format is known but the content is unusable."""

    status_code = 422
    reason = "unprocessable"


class ServiceBusyError(VlkdError):
    """Raised when the inference queue is full; the client should retry later."""

    status_code = 503
    reason = "busy"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ModelError(VlkdError):
    """Raised at start-up when the model file cannot be used."""

    reason = "model"


class ContractError(ModelError):
    """Raised when the model's metadata contract is missing or inconsistent."""

    reason = "contract"
