"""``GET /v1/model``: the model card of the served model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.routes.deps import ServiceDep
from app.schemas import InputContract, ModelCard

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", response_model=ModelCard)
async def model_card(request: Request, service: ServiceDep) -> ModelCard:
    """The served model: labels, version, input contract, intended use, metrics."""
    contract = service.contract
    model = service.model

    return ModelCard(
        name=contract.model_name,
        version=contract.model_version,
        sha256=model.sha256,
        labels=list(contract.labels),
        onnx_ir_version=model.ir_version,
        onnx_opset=model.opset,
        input=InputContract(
            input_size=contract.preprocess.size,
            mean=list(contract.preprocess.mean),
            std=list(contract.preprocess.std),
            preprocess_version=contract.preprocess_version,
            calibration_temperature=contract.calibration_temperature,
        ),
        has_features=contract.features_output is not None,
        has_content_gate=contract.gate is not None,
        dicom_syntaxes=request.app.state.decoders,
        card=contract.card,
    )
