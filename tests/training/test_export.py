"""Tests for the ONNX export: checker, parity on real images, contract metadata."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app import model as service_model
from app.errors import ContractError, ModelError
from training.export import (
    ExportResult,
    attach_metrics,
    check_parity,
    export_student,
    load_checkpoint,
    main,
    parity_images,
    read_contract,
    write_metadata,
)
from training.student import Student, build_student

torch.set_num_threads(2)

SIZE = 64
LABELS = ("normal", "pneumonia", "nodule")


def _one_step_student(seed: int = 0) -> Student:
    """An ImageNet-initialised student after one SGD step (realistic magnitudes)."""
    torch.manual_seed(seed)
    student = build_student("mobilenet_v2", len(LABELS), pretrained=True)
    optimiser = torch.optim.SGD(student.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(
        student(torch.randn(4, 3, SIZE, SIZE)), torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    optimiser.step()

    return student.eval()


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private torch hub cache for the module's ImageNet-initialised students."""
    path = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: str(path))
        yield path


@pytest.fixture(scope="module")
def manifest(shared_data: Path) -> Path:
    """The real cxr3 manifest."""
    return shared_data / "cxr3" / "manifest.csv"


@pytest.fixture(scope="module")
def student(hub_dir: Path) -> Student:
    """One trained-a-little student shared by the module."""
    return _one_step_student()


@pytest.fixture(scope="module")
def exported(
    student: Student, manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    """The student exported once at 64 px with a full contract."""
    images = parity_images(SIZE, count=4, manifest=manifest, labels=LABELS)
    out = tmp_path_factory.mktemp("export") / "student.onnx"

    return export_student(
        student,
        out,
        images=images,
        labels=LABELS,
        input_size=SIZE,
        model_name="vlkd-test",
        model_version="0.0.1",
        calibration_temperature=1.5,
        card={"intended_use": "tests only"},
        teacher="stand-in",
        kd_alpha=0.7,
        kd_temperature=4.0,
        training_data={"images": 12},
        metrics={"val": {"macro_auc": 0.5}},
    )


def test_export_writes_checked_onnx_with_named_dynamic_io(
    exported: ExportResult,
) -> None:
    """The file passes onnx.checker, uses opset >= 17 and a dynamic batch axis."""
    proto = onnx.load(str(exported.path))

    onnx.checker.check_model(proto, full_check=True)

    opset = {entry.domain: entry.version for entry in proto.opset_import}
    assert opset.get("", opset.get("ai.onnx", 0)) >= 17
    (image,) = proto.graph.input
    assert image.name == "image"
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert [out.name for out in proto.graph.output] == ["logits", "features", "cam"]


def test_export_matches_torch_on_real_images(
    exported: ExportResult, student: Student, manifest: Path
) -> None:
    """onnxruntime and PyTorch agree within 1e-4 on real, unseen test images."""
    images = parity_images(SIZE, count=3, manifest=manifest, split="test")
    session = ort.InferenceSession(str(exported.path))

    got = session.run(["logits", "features", "cam"], {"image": images})
    with torch.no_grad():
        want = student.forward_maps(torch.from_numpy(images))

    for onnx_value, torch_value in zip(got, want, strict=True):
        np.testing.assert_allclose(onnx_value, torch_value.numpy(), atol=1e-4, rtol=0)
    assert max(exported.parity.max_abs_diff.values()) <= 1e-4
    assert exported.parity.n_images == 4


def test_export_gives_same_output_alone_and_in_batch(
    exported: ExportResult, manifest: Path
) -> None:
    """An image scored alone equals the same image inside a batch of three."""
    images = parity_images(SIZE, count=3, manifest=manifest, split="test")
    session = ort.InferenceSession(str(exported.path))

    (batch,) = session.run(["logits"], {"image": images})
    (alone,) = session.run(["logits"], {"image": images[1:2]})

    np.testing.assert_allclose(alone[0], batch[1], atol=1e-5, rtol=0)
    assert exported.parity.max_batch_vs_single <= 1e-5


def test_export_metadata_round_trips_through_contract(exported: ExportResult) -> None:
    """Every contract field and training fact reads back as written."""
    contract = read_contract(exported.path)

    assert contract.labels == LABELS
    assert contract.preprocess.size == SIZE
    assert contract.calibration_temperature == 1.5
    assert (contract.model_name, contract.model_version) == ("vlkd-test", "0.0.1")
    assert (contract.features_output, contract.cam_output) == ("features", "cam")
    assert contract.card == {"intended_use": "tests only"}
    assert contract.extra["vlkd.teacher"] == "stand-in"
    assert float(contract.extra["vlkd.kd_alpha"]) == 0.7
    assert float(contract.extra["vlkd.kd_temperature"]) == 4.0
    assert json.loads(contract.extra["vlkd.training_data"]) == {"images": 12}
    assert json.loads(contract.extra["vlkd.metrics"])["val"]["macro_auc"] == 0.5


def test_service_loader_accepts_exported_model(exported: ExportResult) -> None:
    """The service's own loader and self-test take the file as it is."""
    loaded = service_model.load_model(exported.path, intra_op_threads=1)

    service_model.self_test(loaded)

    assert loaded.contract.labels == LABELS
    assert loaded.opset >= 17


def test_write_metadata_adds_gate_and_keeps_contract(
    exported: ExportResult, tmp_path: Path
) -> None:
    """A later vlkd.gate entry lands in the file with the contract intact."""
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.path.read_bytes())
    gate = {"threshold": 3.5, "mean": [0.0, 1.0]}

    returned = write_metadata(path, {"vlkd.gate": json.dumps(gate)})
    reread = read_contract(path)

    assert returned is not None and returned.gate == gate
    assert reread.gate == gate
    assert reread.labels == LABELS
    assert reread.calibration_temperature == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_write_metadata_refuses_update_that_breaks_contract(
    exported: ExportResult, tmp_path: Path
) -> None:
    """An entry that would make the contract invalid leaves the file untouched."""
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.path.read_bytes())
    before = path.read_bytes()

    with pytest.raises(ContractError):
        write_metadata(path, {"vlkd.preprocess_version": "other"})

    assert path.read_bytes() == before


def test_attach_metrics_updates_metadata_and_card(
    exported: ExportResult, tmp_path: Path
) -> None:
    """Evaluation metrics added after export reach vlkd.metrics, the card and .md."""
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.path.read_bytes())
    metrics = {"split": "test", "overall": {"n": 9, "macro_auc": float("nan")}}

    contract = attach_metrics(path, metrics, tmp_path / "MODEL_CARD.md")

    assert json.loads(contract.extra["vlkd.metrics"])["overall"]["n"] == 9
    assert contract.card["metrics"]["overall"]["macro_auc"] is None
    assert contract.card["intended_use"] == "tests only"
    assert "| n | 9 |" in (tmp_path / "MODEL_CARD.md").read_text()


def test_export_writes_nothing_when_parity_images_have_wrong_size(
    student: Student, tmp_path: Path
) -> None:
    """Inputs that do not match the input size stop the export before any file."""
    out = tmp_path / "student.onnx"
    wrong = np.zeros((2, 3, SIZE + 8, SIZE + 8), dtype=np.float32)

    with pytest.raises(ModelError, match="parity images"):
        export_student(student, out, images=wrong, input_size=SIZE)

    assert list(tmp_path.iterdir()) == []


def test_check_parity_raises_when_graph_and_student_differ(
    exported: ExportResult, student: Student, manifest: Path
) -> None:
    """A graph compared with a slightly different student fails the 1e-4 check."""
    proto = onnx.load(str(exported.path))
    other = copy.deepcopy(student)
    with torch.no_grad():
        other.classifier.weight.add_(1e-3)
    images = parity_images(SIZE, count=2, manifest=manifest)

    with pytest.raises(ModelError, match="differs from PyTorch"):
        check_parity(proto, other, images)


def test_load_checkpoint_rebuilds_student_when_saved_from_ddp(
    student: Student, tmp_path: Path
) -> None:
    """A checkpoint with DistributedDataParallel 'module.' keys loads and matches."""
    state = {f"module.{key}": value for key, value in student.state_dict().items()}
    path = tmp_path / "best.pt"
    torch.save(
        {
            "state_dict": state,
            "arch": "mobilenet_v2",
            "labels": list(LABELS),
            "input_size": SIZE,
            "config": {"alpha": 0.7},
            "val_metrics": {"macro_auc": 0.6},
        },
        path,
    )
    image = torch.randn(1, 3, SIZE, SIZE)

    checkpoint = load_checkpoint(path)
    with torch.no_grad():
        got, want = checkpoint.student(image), student(image)

    torch.testing.assert_close(got, want)
    assert checkpoint.labels == LABELS
    assert checkpoint.config == {"alpha": 0.7}


def test_load_checkpoint_raises_model_error_when_keys_missing(tmp_path: Path) -> None:
    """A file that is not a vlkd checkpoint is refused with the missing keys."""
    path = tmp_path / "best.pt"
    torch.save({"weights": {}}, path)

    with pytest.raises(ModelError, match="lacks keys"):
        load_checkpoint(path)


def test_export_command_writes_model_and_card(
    student: Student, manifest: Path, tmp_path: Path
) -> None:
    """``python -m training.export`` turns a checkpoint into a model and its card."""
    checkpoint = tmp_path / "best.pt"
    torch.save(
        {
            "state_dict": student.state_dict(),
            "arch": "mobilenet_v2",
            "labels": list(LABELS),
            "input_size": SIZE,
            "config": {"alpha": 0.7, "temperature": 4.0, "teacher_kind": "vlkd"},
            "val_metrics": {"macro_auc": 0.6},
        },
        checkpoint,
    )
    out = tmp_path / "models" / "vlkd-student.onnx"

    code = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--manifest",
            str(manifest),
            "--calibrate",
            "--calibration-limit",
            "6",
            "--parity-images",
            "3",
        ]
    )

    assert code == 0
    contract = read_contract(out)
    calibration = contract.card["calibration"]
    assert calibration["n"] == 6.0
    assert contract.calibration_temperature == calibration["temperature"]
    assert contract.calibration_temperature != 1.0
    assert contract.extra["vlkd.teacher"] == "vlkd"
    assert "not a diagnosis" in contract.card["intended_use"]
    card_text = (out.parent / "MODEL_CARD.md").read_text()
    assert "JSRT" in card_text and "Intended use" in card_text


def test_export_uses_eval_mode_and_restores_training_mode(
    student: Student, manifest: Path, tmp_path: Path
) -> None:
    """A student handed over in train mode exports in eval mode and stays training."""
    images = parity_images(SIZE, count=2, manifest=manifest, labels=LABELS)
    student.train()

    try:
        result = export_student(
            student, tmp_path / "m.onnx", images=images, input_size=SIZE
        )
        still_training = student.training
    finally:
        student.eval()

    assert still_training
    assert max(result.parity.max_abs_diff.values()) <= 1e-4
