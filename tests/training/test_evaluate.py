"""Tests for the evaluation command: manifest reading, report numbers, outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.errors import DataError
from training.evaluate import (
    Case,
    compute_report,
    evaluate_model,
    headline_metrics,
    load_model,
    main,
    predict_logits,
    read_cases,
)
from training.export import ExportResult, export_student, parity_images, read_contract
from training.student import Student, build_student

torch.set_num_threads(2)

SIZE = 64
LABELS = ("normal", "pneumonia", "nodule")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def manifest(shared_data: Path) -> Path:
    """The real cxr3 manifest."""
    return shared_data / "cxr3" / "manifest.csv"


@pytest.fixture(scope="module")
def student() -> Student:
    """A small randomly initialised student (evaluation needs no skill)."""
    torch.manual_seed(0)
    return build_student("mobilenet_v2", len(LABELS), pretrained=False).eval()


@pytest.fixture(scope="module")
def exported(
    student: Student, manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    """The student exported at 64 px with calibration temperature 1.5."""
    images = parity_images(SIZE, count=2, manifest=manifest, labels=LABELS)
    out = tmp_path_factory.mktemp("model") / "student.onnx"

    return export_student(
        student, out, images=images, input_size=SIZE, calibration_temperature=1.5
    )


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = ["image", "label", "patient_id", "split", "view", "source"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in columns})
    return path


def _case(label: int, source: str, view: str = "PA") -> Case:
    return Case(Path("x.png"), "x.png", label, source, view)


def test_read_cases_keeps_labelled_rows_of_split_when_mixed(tmp_path: Path) -> None:
    """Other splits and unlabelled rows are left out; paths are manifest-relative."""
    manifest = _write_manifest(
        tmp_path / "m.csv",
        [
            {"image": "a.png", "label": "normal", "split": "test", "source": "JSRT"},
            {"image": "b.png", "label": "", "split": "test"},
            {"image": "c.png", "label": "nodule", "split": "val"},
            {"image": "d.png", "label": "pneumonia", "split": "test", "view": "AP"},
        ],
    )

    cases = read_cases(manifest, "test", LABELS)

    assert [c.image for c in cases] == ["a.png", "d.png"]
    assert [c.label for c in cases] == [0, 1]
    assert cases[0].path == tmp_path / "a.png"
    assert (cases[0].source, cases[1].source, cases[1].view) == (
        "JSRT",
        "unknown",
        "AP",
    )


def test_read_cases_limit_spreads_over_whole_split(manifest: Path) -> None:
    """A limited run still reaches the end of the split (both sources)."""
    everything = read_cases(manifest, "test", LABELS)

    subset = read_cases(manifest, "test", LABELS, limit=10)

    assert len(subset) == 10
    assert subset[0] == everything[0] and subset[-1] == everything[-1]
    assert {c.source for c in subset} == {c.source for c in everything}


@pytest.mark.parametrize(
    "rows",
    [
        [{"image": "a.png", "label": "effusion", "split": "test"}],
        [{"image": "a.png", "label": "normal", "split": "train"}],
    ],
)
def test_read_cases_raises_data_error_when_split_unusable(
    tmp_path: Path, rows: list[dict[str, str]]
) -> None:
    """Unknown labels and empty splits are refused with a DataError."""
    manifest = _write_manifest(tmp_path / "m.csv", rows)

    with pytest.raises(DataError):
        read_cases(manifest, "test", LABELS)


def test_compute_report_scores_nodule_within_jsrt_and_groups() -> None:
    """Within-JSRT AUC uses JSRT rows only; NIH has no nodule AUC."""
    cases = [
        _case(2, "JSRT"),
        _case(2, "JSRT"),
        _case(0, "JSRT"),
        _case(0, "JSRT"),
        _case(0, "NIH ChestX-ray14", "AP"),
        _case(1, "NIH ChestX-ray14", "AP"),
    ]
    logits = np.array(
        [
            [0.0, 0.0, 3.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 0.5],
            [2.0, 0.0, -1.0],
            [0.0, 0.0, 5.0],  # a NIH image that looks like a nodule
            [0.0, 2.0, 0.0],
        ]
    )

    report = compute_report(cases, logits, LABELS, 1.0, n_resamples=50, seed=0)

    within = report["nodule_within_jsrt"]
    assert within["auc"] == 1.0
    assert (within["n_nodule"], within["n_normal"]) == (2, 2)
    assert report["overall"]["per_class"]["nodule"]["auc"] < 1.0
    assert report["by_source"]["NIH ChestX-ray14"]["per_class"]["nodule"]["auc"] is None
    assert set(report["by_view"]) == {"AP", "PA"}
    assert report["overall"]["n"] == 6


def test_headline_metrics_keeps_summary_and_drops_matrices() -> None:
    """The compact metrics carry overall and within-JSRT numbers, no matrices."""
    cases = [_case(0, "JSRT"), _case(2, "JSRT"), _case(1, "NIH", "AP")]
    logits = np.eye(3)[[0, 2, 1]] * 2.0
    report = compute_report(cases, logits, LABELS, 1.0, n_resamples=10, seed=0)

    headline = headline_metrics(report)

    assert "confusion_matrix" not in headline["overall"]
    assert headline["nodule_within_jsrt"]["auc"] == 1.0
    assert headline["by_source"]["NIH"]["n"] == 1
    assert math.isclose(headline["overall"]["accuracy"], 1.0)


def test_evaluate_model_writes_reports_on_few_images(
    exported: ExportResult, manifest: Path, tmp_path: Path
) -> None:
    """A 12-image run writes JSON, Markdown, predictions and three PNG plots."""
    out = tmp_path / "report"

    report = evaluate_model(
        exported.path, "test", out, manifest=manifest, n_resamples=20, limit=12
    )

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == report["n"] == 12
    assert saved["temperature"] == 1.5 and saved["split"] == "test"
    assert "within JSRT" in (out / "report.md").read_text()
    assert len((out / "predictions.csv").read_text().splitlines()) == 13
    for name in ("roc.png", "reliability.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert set(saved["by_source"]) == {"JSRT", "NIH ChestX-ray14"}


def test_checkpoint_and_onnx_give_same_logits_when_same_weights(
    exported: ExportResult, student: Student, manifest: Path, tmp_path: Path
) -> None:
    """Evaluating best.pt or its ONNX export scores the same images alike."""
    checkpoint = tmp_path / "best.pt"
    torch.save(
        {
            "state_dict": student.state_dict(),
            "arch": "mobilenet_v2",
            "labels": list(LABELS),
            "input_size": SIZE,
            "config": {},
            "val_metrics": {},
        },
        checkpoint,
    )
    cases = read_cases(manifest, "val", LABELS, limit=4)

    from_onnx = predict_logits(load_model(exported.path), cases)
    from_torch = predict_logits(load_model(checkpoint), cases)

    np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4, rtol=0)


def test_evaluate_command_attaches_metrics_when_asked(
    exported: ExportResult, manifest: Path, tmp_path: Path
) -> None:
    """--attach stores the headline metrics in the model and writes its card."""
    model = tmp_path / "models" / "student.onnx"
    model.parent.mkdir()
    model.write_bytes(exported.path.read_bytes())

    code = main(
        [
            "--model",
            str(model),
            "--split",
            "test",
            "--out",
            str(tmp_path / "report"),
            "--manifest",
            str(manifest),
            "--limit",
            "8",
            "--bootstrap",
            "10",
            "--attach",
        ]
    )

    assert code == 0
    metrics = json.loads(read_contract(model).extra["vlkd.metrics"])
    assert metrics["split"] == "test" and metrics["overall"]["n"] == 8
    assert "| n | 8 |" in (model.parent / "MODEL_CARD.md").read_text()
