"""Response models: they document the API in ``/openapi.json`` and ``/docs``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    """Which model produced a result."""

    name: str
    version: str
    sha256: str


class Timings(BaseModel):
    """Time spent on each step of one image, in milliseconds."""

    decode: float
    preprocess: float
    inference: float = Field(description="the onnxruntime run (shared in a batch)")
    total: float = Field(description="from the upload's last byte to the answer")


class ClassifyResponse(BaseModel):
    """The classification of one image, or why it could not be assessed."""

    request_id: str
    label: str | None = Field(description="most probable class; null if not assessable")
    probabilities: dict[str, float] | None = Field(
        description="calibrated probability of every class; null if not assessable"
    )
    assessable: bool
    not_assessable_reasons: list[str]
    warnings: list[str] = Field(description="e.g. the DICOM says it is not a chest")
    model: ModelRef
    timings_ms: Timings


class BatchItem(BaseModel):
    """One image of a batch: its result, or its own error."""

    index: int
    status: int = Field(description="200, or the 4xx this image alone would get")
    detail: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    assessable: bool | None = None
    not_assessable_reasons: list[str] | None = None
    warnings: list[str] | None = None
    timings_ms: Timings | None = None


class BatchResponse(BaseModel):
    """Results in the order the images were uploaded."""

    request_id: str
    model: ModelRef
    results: list[BatchItem]


class ErrorResponse(BaseModel):
    """Every error: a short human ``detail`` and the request id to quote."""

    detail: str
    request_id: str | None = None


class InputContract(BaseModel):
    """What the model expects, from its metadata."""

    input_size: int
    mean: list[float]
    std: list[float]
    preprocess_version: str
    calibration_temperature: float


class ModelCard(BaseModel):
    """The served model: identity, labels, input contract and its own card."""

    name: str
    version: str
    sha256: str
    labels: list[str]
    onnx_ir_version: int
    onnx_opset: int
    input: InputContract
    has_features: bool
    has_content_gate: bool
    dicom_syntaxes: dict[str, bool] = Field(
        description="DICOM transfer syntaxes and whether their start-up decode "
        "self-test passed (empty when the self-test is switched off)"
    )
    card: dict[str, Any] = Field(
        description="intended use, training data summary, evaluation metrics"
    )


class Probe(BaseModel):
    """A liveness or readiness answer."""

    status: str
