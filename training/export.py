"""Export a trained student to ONNX, prove it matches PyTorch, and stamp its contract.

``python -m training.export --checkpoint runs/kd/best.pt --out
models/vlkd-student.onnx --calibrate`` does, in order:

1. rebuild the student from the checkpoint and put it in eval mode;
2. export it (opset 17, input ``image`` ``(N, 3, S, S)`` with a dynamic batch
   axis; outputs ``logits`` (raw, no softmax), ``features`` (pooled
   penultimate vector) and ``cam`` (class activation maps));
3. ``onnx.checker``, then onnxruntime vs PyTorch on *real* images decoded and
   preprocessed exactly as the service does: max abs difference <= 1e-4 on
   every output, and each image alone equals the same image inside a batch;
4. write the contract (``app.contract.to_metadata``) plus the training facts
   (``vlkd.teacher``, ``vlkd.kd_alpha``, ``vlkd.kd_temperature``,
   ``vlkd.training_data``, ``vlkd.metrics``) into the file's metadata;
5. read the file back through onnxruntime's metadata map and
   ``app.contract.from_metadata``, the way the service will.

The final path only ever holds a file that passed every check: all work
happens on a temporary file in the same folder, renamed at the end.
:func:`write_metadata` adds entries (e.g. ``vlkd.gate``) to an exported file
the same atomic way.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from app.contract import ModelContract, from_metadata, to_metadata
from app.errors import ContractError, ModelError
from app.preprocess import PreprocessConfig
from training.calibrate import CalibrationResult, fit_temperature
from training.card import (
    build_card,
    json_safe_card,
    public_file_mode,
    write_model_card,
)
from training.errors import DataError
from training.evaluate import (
    DEFAULT_MANIFEST,
    Case,
    LoadedModel,
    predict_logits,
    read_cases,
    service_input,
)
from training.student import Student, StudentMapsHead, build_student

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "features", "cam")
PARITY_ATOL = 1e-4  # onnxruntime vs PyTorch, any output element
BATCH_ATOL = 1e-5  # one image alone vs inside a batch, onnxruntime only
DEFAULT_LABELS = ("normal", "pneumonia", "nodule")
DEFAULT_MODEL_NAME = "vlkd-mobilenetv2-kd"
DEFAULT_MODEL_VERSION = "1.0.0"


# --- checkpoints -------------------------------------------------------------


@dataclass
class Checkpoint:
    """A student rebuilt from ``best.pt`` plus what was saved beside its weights."""

    student: Student
    arch: str
    labels: tuple[str, ...]
    input_size: int
    config: dict[str, Any]
    val_metrics: dict[str, Any]


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo DistributedDataParallel (``module.``) and torch.compile wrappers."""
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def load_checkpoint(path: Path) -> Checkpoint:
    """Rebuild the student saved by ``training.train`` (weights only, no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: expected a file at {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise ModelError(f"checkpoint cannot be read: {error}") from error
    missing = {"state_dict", "arch", "labels", "input_size"} - set(saved)
    if missing:
        raise ModelError(f"checkpoint lacks keys {sorted(missing)}")

    labels = tuple(saved["labels"])
    student = build_student(saved["arch"], len(labels), pretrained=False)
    try:
        student.load_state_dict(_strip_prefixes(saved["state_dict"]))
    except RuntimeError as error:
        raise ModelError(f"checkpoint weights do not fit {saved['arch']}") from error
    student.eval()

    return Checkpoint(
        student=student,
        arch=str(saved["arch"]),
        labels=labels,
        input_size=int(saved["input_size"]),
        config=dict(saved.get("config") or {}),
        val_metrics=dict(saved.get("val_metrics") or {}),
    )


def torch_model(student: Student, labels: Sequence[str], size: int) -> LoadedModel:
    """Wrap an in-memory student like a loaded model (for calibration)."""
    student = student.eval()

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return student(torch.from_numpy(batch)).numpy()

    return LoadedModel(
        logits=logits,
        labels=tuple(labels),
        preprocess=PreprocessConfig(size=size),
        temperature=1.0,
        description="student (torch)",
    )


# --- real images for the parity check ----------------------------------------


def parity_images(
    size: int,
    count: int = 6,
    manifest: Path = DEFAULT_MANIFEST,
    split: str = "val",
    labels: Sequence[str] = DEFAULT_LABELS,
) -> np.ndarray:
    """``count`` real images spread over a split, through the service's path."""
    cases: list[Case] = read_cases(manifest, split, labels, limit=count)
    config = PreprocessConfig(size=size)

    return np.stack([service_input(case.path, config) for case in cases])


# --- ONNX graph and checks -------------------------------------------------------


def _session(model_bytes: bytes, threads: int = 2) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelError(
            f"onnxruntime cannot load the exported model: {error}"
        ) from error


def export_graph(student: Student, size: int, opset: int = OPSET) -> onnx.ModelProto:
    """Trace the student (eval mode, on a CPU copy) into a checked ONNX model."""
    model = copy.deepcopy(student).cpu().to(memory_format=torch.contiguous_format)
    head = StudentMapsHead(model).eval()
    example = torch.zeros(2, 3, size, size)
    batch_axis = {0: "batch"}

    handle, tmp_name = tempfile.mkstemp(suffix=".onnx")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # FIXME: the torch.export-based exporter (the default since torch 2.9)
            # needs onnxscript, which is not installed; the TorchScript exporter
            # is deprecated but exact for this plain CNN. Switch when convenient.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                head,
                (example,),
                tmp_name,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_axes={name: batch_axis for name in (INPUT_NAME, *OUTPUT_NAMES)},
                do_constant_folding=True,
            )
        proto = onnx.load(tmp_name)
    finally:
        os.unlink(tmp_name)

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ModelError(f"exported graph fails onnx.checker: {error}") from error

    return proto


@dataclass
class ParityReport:
    """How closely onnxruntime reproduces PyTorch on the given images."""

    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_batch_vs_single: float = 0.0
    n_images: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for logs and the export summary."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_batch_vs_single": self.max_batch_vs_single,
            "n_images": self.n_images,
        }


def check_parity(
    proto: onnx.ModelProto,
    student: Student,
    images: np.ndarray,
    atol: float = PARITY_ATOL,
    batch_atol: float = BATCH_ATOL,
) -> ParityReport:
    """Compare onnxruntime with PyTorch on ``images``; raise ModelError if apart."""
    if images.ndim != 4 or len(images) < 2:
        raise ModelError(f"parity needs a batch of >= 2 images, got {images.shape}")
    session = _session(proto.SerializeToString())
    batch = np.ascontiguousarray(images, dtype=np.float32)

    onnx_out = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    with torch.no_grad():
        reference = student.eval().forward_maps(torch.from_numpy(batch))
    report = ParityReport(n_images=len(batch))
    for name, got, want in zip(OUTPUT_NAMES, onnx_out, reference, strict=True):
        report.max_abs_diff[name] = float(np.abs(got - want.numpy()).max())

    for index in range(len(batch)):
        alone = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch[index : index + 1]})
        for single, batched in zip(alone, onnx_out, strict=True):
            diff = float(np.abs(single[0] - batched[index]).max())
            report.max_batch_vs_single = max(report.max_batch_vs_single, diff)

    worst = max(report.max_abs_diff.values())
    if worst > atol:
        raise ModelError(
            f"onnxruntime differs from PyTorch by up to {worst:.2e} "
            f"(allowed {atol:.0e}): {report.max_abs_diff}"
        )
    if report.max_batch_vs_single > batch_atol:
        raise ModelError(
            f"an image alone differs from the same image in a batch by "
            f"{report.max_batch_vs_single:.2e} (allowed {batch_atol:.0e})"
        )
    logger.info(
        "parity on %d real images: max |onnx - torch| %s, batch vs single %.1e",
        report.n_images,
        {k: f"{v:.1e}" for k, v in report.max_abs_diff.items()},
        report.max_batch_vs_single,
    )

    return report


# --- metadata ------------------------------------------------------------------


def _save_atomic(proto: onnx.ModelProto, path: Path) -> None:
    """Serialise ``proto`` to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(proto.SerializeToString())
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, public_file_mode())  # mkstemp makes it owner-only
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in proto.metadata_props}


def _set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key in sorted(metadata):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, metadata[key]


def read_contract(path: Path) -> ModelContract:
    """Load ``path`` in onnxruntime and parse its contract the service's way."""
    session = _session(Path(path).read_bytes())
    return from_metadata(session.get_modelmeta().custom_metadata_map)


def write_metadata(onnx_path: Path, extra: dict[str, str]) -> ModelContract | None:
    """Add or replace metadata entries of an exported file, atomically.

    ``extra`` maps keys (``vlkd.gate`` and friends) to string values. If the
    file carries a vlkd contract, the updated metadata must still parse with
    :func:`app.contract.from_metadata` or nothing is written; the parsed
    contract is returned (``None`` for a file without a contract).
    """
    if not all(isinstance(v, str) for v in extra.values()):
        raise ContractError("ONNX metadata values must be strings (JSON-encode them)")
    proto = onnx.load(str(onnx_path))
    metadata = _metadata(proto) | dict(extra)

    contract = None
    if any(key.startswith("vlkd.") for key in _metadata(proto)):
        contract = from_metadata(metadata)
    _set_metadata(proto, metadata)
    _save_atomic(proto, Path(onnx_path))
    logger.info("metadata updated: %s", ", ".join(sorted(extra)))

    return contract


def attach_metrics(
    onnx_path: Path, metrics: dict[str, Any], card_path: Path | None = None
) -> ModelContract:
    """Store evaluation ``metrics`` in an exported file and its model card.

    Export happens before the test evaluation (which runs the exported file), so
    the final metrics are added afterwards: ``vlkd.metrics`` and the card's
    ``metrics`` are replaced, and ``card_path`` (``MODEL_CARD.md``) is rewritten
    from the updated card when given.
    """
    contract = read_contract(onnx_path)
    card = dict(contract.card)
    card["metrics"] = metrics
    card = json_safe_card(card)

    updated = write_metadata(
        onnx_path,
        {
            "vlkd.metrics": json.dumps(card["metrics"], sort_keys=True),
            "vlkd.card": json.dumps(card, sort_keys=True),
        },
    )
    if card_path is not None:
        write_model_card(card, card_path)
    assert updated is not None

    return updated


# --- the whole export ------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_student` wrote and measured."""

    path: Path
    contract: ModelContract
    parity: ParityReport
    size_bytes: int


def export_student(
    student: Student,
    out_path: Path,
    *,
    images: np.ndarray,
    labels: Sequence[str] = DEFAULT_LABELS,
    input_size: int = 224,
    model_name: str = DEFAULT_MODEL_NAME,
    model_version: str = DEFAULT_MODEL_VERSION,
    calibration_temperature: float = 1.0,
    card: dict[str, Any] | None = None,
    teacher: str = "",
    kd_alpha: float | None = None,
    kd_temperature: float | None = None,
    training_data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    opset: int = OPSET,
) -> ExportResult:
    """Export, check and stamp ``student``; the file at ``out_path`` is final.

    ``images`` are real preprocessed inputs ``(N >= 2, 3, S, S)`` for the parity
    check (see :func:`parity_images`). Raises :class:`~app.errors.ModelError`
    when a check fails; nothing is written then.
    """
    if images.shape[1:] != (3, input_size, input_size):
        raise ModelError(
            f"parity images must be (N, 3, {input_size}, {input_size}), "
            f"got {images.shape}"
        )
    if len(labels) != student.num_classes:
        raise ModelError(
            f"{len(labels)} labels given for a {student.num_classes}-class student"
        )
    if opset < OPSET:
        raise ModelError(f"opset must be >= {OPSET}, got {opset}")
    was_training = student.training
    try:
        proto = export_graph(student, input_size, opset)
        parity = check_parity(proto, student.eval(), images)
    finally:
        student.train(was_training)  # leave the caller's model as it was

    extra = {"vlkd.teacher": teacher}
    if kd_alpha is not None:
        extra["vlkd.kd_alpha"] = repr(float(kd_alpha))
    if kd_temperature is not None:
        extra["vlkd.kd_temperature"] = repr(float(kd_temperature))
    extra["vlkd.training_data"] = json.dumps(training_data or {}, sort_keys=True)
    extra["vlkd.metrics"] = json.dumps(metrics or {}, sort_keys=True)
    contract = ModelContract(
        model_name=model_name,
        model_version=model_version,
        labels=tuple(labels),
        preprocess=PreprocessConfig(size=input_size),
        input_name=INPUT_NAME,
        logits_output=OUTPUT_NAMES[0],
        features_output=OUTPUT_NAMES[1],
        cam_output=OUTPUT_NAMES[2],
        calibration_temperature=calibration_temperature,
        card=card or {},
        extra=extra,
    )
    proto.producer_name = "vlkd"
    proto.doc_string = f"{model_name} {model_version}: chest X-ray triage student"
    _set_metadata(proto, to_metadata(contract))

    # Validate the temp file the way the service will, then publish it.
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=out_path.parent, suffix=".onnx.part")
    os.close(handle)
    try:
        _save_atomic(proto, Path(tmp_name))
        loaded = read_contract(Path(tmp_name))
        if loaded.labels != contract.labels or loaded.cam_output != "cam":
            raise ContractError("contract read back differs from the one written")
        os.replace(tmp_name, out_path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)

    size = out_path.stat().st_size
    logger.info(
        "exported %s %s (%.1f MB, opset %d, t=%.3f)",
        model_name,
        model_version,
        size / 1e6,
        opset,
        calibration_temperature,
    )

    return ExportResult(path=out_path, contract=loaded, parity=parity, size_bytes=size)


def calibrate_student(
    student: Student,
    labels: Sequence[str],
    input_size: int,
    manifest: Path = DEFAULT_MANIFEST,
    split: str = "val",
    limit: int | None = None,
) -> CalibrationResult:
    """Fit the calibration temperature on ``split`` through the service's path."""
    cases = read_cases(manifest, split, labels, limit)
    logits = predict_logits(torch_model(student, labels, input_size), cases)

    return fit_temperature(logits, np.array([case.label for case in cases]))


def training_summary(config: dict[str, Any], manifest: Path) -> dict[str, Any]:
    """The ``vlkd.training_data`` entry: which data and label share trained it."""
    counts: dict[str, dict[str, int]] = {}
    try:
        import csv

        with Path(manifest).open(newline="") as handle:
            for row in csv.DictReader(handle):
                split = counts.setdefault(row["split"], {})
                split[row["label"] or "unlabelled"] = (
                    split.get(row["label"] or "unlabelled", 0) + 1
                )
    except (OSError, KeyError):
        logger.warning("manifest unreadable; training data summary without counts")

    return {
        "manifest": "cxr3 (NIH ChestX-ray14 normal/pneumonia + JSRT nodule/normal)",
        "split_counts": counts,
        "label_fraction": config.get("label_fraction", 1.0),
        "epochs": config.get("epochs"),
        "seed": config.get("seed"),
        "arch": config.get("arch"),
        "pretrained": config.get("pretrained"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: checkpoint in, checked ONNX file with contract (+ card) out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--model-version", default=DEFAULT_MODEL_VERSION)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--temperature", type=float, help="calibration t to store")
    group.add_argument(
        "--calibrate",
        action="store_true",
        help="fit t on the val split (NLL) before exporting",
    )
    parser.add_argument("--metrics", type=Path, help="evaluation metrics.json to embed")
    parser.add_argument(
        "--teacher", default=None, help="teacher identity (default: from config)"
    )
    parser.add_argument(
        "--calibration-limit",
        type=int,
        default=None,
        help="calibrate on an evenly spread subset of val (smoke runs only)",
    )
    parser.add_argument("--parity-images", type=int, default=6)
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument(
        "--card", type=Path, default=None, help="MODEL_CARD.md (default: beside --out)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    torch.set_num_threads(2)

    try:
        checkpoint = load_checkpoint(args.checkpoint)
        config = checkpoint.config
        calibration: dict[str, Any] = {}
        temperature = args.temperature or 1.0
        if args.calibrate:
            result = calibrate_student(
                checkpoint.student,
                checkpoint.labels,
                checkpoint.input_size,
                args.manifest,
                limit=args.calibration_limit,
            )
            calibration = result.as_dict()
            temperature = result.temperature
        metrics = json.loads(args.metrics.read_text()) if args.metrics else {}
        metrics = metrics or {"val": checkpoint.val_metrics}

        teacher = args.teacher or str(config.get("teacher_kind", "unknown"))
        training_data = training_summary(config, args.manifest)
        card = build_card(
            model_name=args.model_name,
            model_version=args.model_version,
            labels=checkpoint.labels,
            input_size=checkpoint.input_size,
            arch=checkpoint.arch,
            teacher=teacher,
            kd_alpha=float(config.get("alpha", 0.0)),
            kd_temperature=float(config.get("temperature", 1.0)),
            training_data=training_data,
            metrics=metrics,
            calibration=calibration,
        )
        images = parity_images(
            checkpoint.input_size,
            args.parity_images,
            args.manifest,
            labels=checkpoint.labels,
        )
        result_export = export_student(
            checkpoint.student,
            args.out,
            images=images,
            labels=checkpoint.labels,
            input_size=checkpoint.input_size,
            model_name=args.model_name,
            model_version=args.model_version,
            calibration_temperature=temperature,
            card=card,
            teacher=teacher,
            kd_alpha=config.get("alpha"),
            kd_temperature=config.get("temperature"),
            training_data=training_data,
            metrics=metrics,
            opset=args.opset,
        )
        write_model_card(card, args.card or args.out.parent / "MODEL_CARD.md")
    except (ModelError, DataError, ValueError) as error:
        logger.error("export failed: %s", error)
        return 1

    print(
        json.dumps({"out": str(result_export.path), **result_export.parity.as_dict()})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
