"""``POST /v1/classify`` and ``POST /v1/classify/batch``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from app import metrics
from app.errors import InputError, UnprocessableImageError
from app.inference import ImageResult
from app.routes.deps import RequestIdDep, ServiceDep, SettingsDep, model_ref
from app.schemas import (
    BatchItem,
    BatchResponse,
    ClassifyResponse,
    ErrorResponse,
    Timings,
)
from app.upload import read_uploads

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["classify"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RAW_BODIES = {
    "application/dicom": _BINARY,
    "image/png": _BINARY,
    "image/jpeg": _BINARY,
}
SINGLE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            **_RAW_BODIES,
        },
    }
}
BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                }
            }
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed request",
        401: "API key missing or wrong",
        413: "upload, pixels, parts or fields over a limit",
        415: "not PNG / JPEG / DICOM, or an undecodable transfer syntax",
        422: "recognised format but unusable content",
        503: "busy: retry after the Retry-After seconds",
    }.items()
}


def _result_fields(result: ImageResult) -> dict[str, Any]:
    return {
        "label": result.label,
        "probabilities": result.probabilities,
        "assessable": result.assessable,
        "not_assessable_reasons": result.not_assessable_reasons,
        "warnings": result.warnings,
        "timings_ms": Timings(**result.timings_ms),
    }


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=SINGLE_BODY,
)
async def classify(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ClassifyResponse:
    """Classify one chest X-ray: multipart field `file`, or a raw PNG/JPEG/DICOM."""
    async with service.admit():
        uploads = await read_uploads(request, settings, field="file")
        if len(uploads) != 1:
            raise UnprocessableImageError(
                f"expected one image in field 'file', got {len(uploads)}; "
                "use /v1/classify/batch for several"
            )
        result = await service.classify(uploads[0].data, uploads[0].media_type)

    return ClassifyResponse(
        request_id=request_id, model=model_ref(service), **_result_fields(result)
    )


@router.post(
    "/classify/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=BATCH_BODY,
)
async def classify_batch(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> BatchResponse:
    """Classify several images (repeated multipart field `files`), results in order."""
    async with service.admit():
        uploads = await read_uploads(request, settings, field="files")
        results = await service.classify_many(
            [(upload.data, upload.media_type) for upload in uploads]
        )

    items = []
    for index, result in enumerate(results):
        if isinstance(result, InputError):
            metrics.REJECTED.labels(reason=result.reason).inc()
            items.append(
                BatchItem(index=index, status=result.status_code, detail=result.detail)
            )
        else:
            items.append(BatchItem(index=index, status=200, **_result_fields(result)))

    return BatchResponse(request_id=request_id, model=model_ref(service), results=items)
