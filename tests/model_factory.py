"""Small ONNX models with a vlkd contract, built with ``onnx.helper`` (no torch).

Use these wherever a test needs "a model the service can load" without the real
distilled student. Every model has one input ``image`` of shape
``(N, 3, size, size)`` (dynamic batch) and computes::

    maps     = Relu(Conv1x1(image))          # (N, F, size, size)
    features = Flatten(GlobalAveragePool(maps))   # (N, F)    output "features"
    logits   = Gemm(features, W, b)          # (N, C)    output "logits"
    cam      = Conv1x1(maps)                 # (N, C, size, size)  optional "cam"

Weights are drawn from a seeded generator, so the same arguments always give the
same file and different images give different logits.

Main entry point::

    from tests.model_factory import write_model
    path = write_model(tmp_path / "m.onnx")                      # valid model
    path = write_model(tmp_path / "m.onnx", with_features=False)  # logits only

Broken variants, for start-up refusal tests: :func:`write_without_contract`,
:func:`write_wrong_preprocess_version`, :func:`write_corrupt`, and
``write_model(..., ir_version=99)`` for an IR version onnxruntime cannot load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.contract import ModelContract, to_metadata
from app.preprocess import PreprocessConfig

LABELS = ("normal", "pneumonia", "nodule")
DEFAULT_SIZE = 32
DEFAULT_FEATURES = 8


def default_contract(
    *,
    labels: tuple[str, ...] = LABELS,
    size: int = DEFAULT_SIZE,
    with_features: bool = True,
    with_cam: bool = False,
    gate: dict[str, Any] | None = None,
    temperature: float = 1.0,
) -> ModelContract:
    """The contract :func:`write_model` embeds unless told otherwise."""
    return ModelContract(
        model_name="vlkd-test-tiny",
        model_version="0.0.1-test",
        labels=labels,
        preprocess=PreprocessConfig(size=size),
        features_output="features" if with_features else None,
        cam_output="cam" if with_cam else None,
        calibration_temperature=temperature,
        card={
            "intended_use": "tests only",
            "training_data": "none: random weights",
            "metrics": {},
        },
        gate=gate,
    )


def build_model(
    *,
    labels: tuple[str, ...] = LABELS,
    size: int = DEFAULT_SIZE,
    n_features: int = DEFAULT_FEATURES,
    with_features: bool = True,
    with_cam: bool = False,
    contract: ModelContract | None = None,
    metadata: dict[str, str] | None = None,
    opset: int = 17,
    ir_version: int = 8,
    fixed_batch: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build a tiny classifier; ``metadata`` (if given) replaces the contract."""
    rng = np.random.default_rng(seed)
    n_classes = len(labels)
    batch: int | str = 1 if fixed_batch else "N"

    # Weights: a 1x1 conv to F maps, a linear head, and a 1x1 conv for the CAM.
    w_conv = rng.normal(0, 1, (n_features, 3, 1, 1)).astype(np.float32)
    b_conv = rng.normal(0, 0.5, (n_features,)).astype(np.float32)
    w_fc = rng.normal(0, 1, (n_features, n_classes)).astype(np.float32)
    b_fc = rng.normal(0, 0.1, (n_classes,)).astype(np.float32)
    w_cam = w_fc.T.reshape(n_classes, n_features, 1, 1).copy()
    initializers = [
        numpy_helper.from_array(w_conv, "w_conv"),
        numpy_helper.from_array(b_conv, "b_conv"),
        numpy_helper.from_array(w_fc, "w_fc"),
        numpy_helper.from_array(b_fc, "b_fc"),
    ]

    nodes = [
        helper.make_node("Conv", ["image", "w_conv", "b_conv"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["maps"]),
        helper.make_node("GlobalAveragePool", ["maps"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "w_fc", "b_fc"], ["logits"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n_classes])
    ]
    if with_features:
        outputs.append(
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, [batch, n_features]
            )
        )
    if with_cam:
        initializers.append(numpy_helper.from_array(w_cam, "w_cam"))
        nodes.append(helper.make_node("Conv", ["maps", "w_cam"], ["cam"]))
        outputs.append(
            helper.make_tensor_value_info(
                "cam", TensorProto.FLOAT, [batch, n_classes, size, size]
            )
        )

    graph = helper.make_graph(
        nodes,
        "vlkd_tiny",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, [batch, 3, size, size]
            )
        ],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="vlkd-tests",
    )
    model.ir_version = ir_version

    if metadata is None:
        contract = contract or default_contract(
            labels=labels, size=size, with_features=with_features, with_cam=with_cam
        )
        metadata = to_metadata(contract)
    helper.set_model_props(model, metadata)

    return model


def write_model(path: Path, **kwargs: Any) -> Path:
    """Build a model with :func:`build_model` and save it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_model(**kwargs).SerializeToString())

    return path


def write_without_contract(path: Path) -> Path:
    """A valid ONNX graph whose metadata has no vlkd keys at all."""
    return write_model(path, metadata={"producer": "somebody else"})


def write_wrong_preprocess_version(path: Path) -> Path:
    """A model whose contract names a preprocessing version the service lacks."""
    metadata = to_metadata(default_contract())
    metadata["vlkd.preprocess_version"] = "vlkd-pre-0-obsolete"

    return write_model(path, metadata=metadata)


def write_corrupt(path: Path) -> Path:
    """A valid model's first half: onnxruntime cannot parse it."""
    data = build_model().SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])

    return path
