"""Short typed aliases for what routes get injected."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.inference import InferenceService
from app.schemas import ModelRef
from app.settings import Settings


def get_service(request: Request) -> InferenceService:
    """The process's inference service, created in the lifespan."""
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def request_id(request: Request) -> str:
    """The id the logging middleware gave this request."""
    return str(request.state.request_id)


def model_ref(service: InferenceService) -> ModelRef:
    """Name, version and sha256 of the served model, for every response."""
    contract = service.contract

    return ModelRef(
        name=contract.model_name,
        version=contract.model_version,
        sha256=service.model.sha256,
    )


ServiceDep = Annotated[InferenceService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RequestIdDep = Annotated[str, Depends(request_id)]
