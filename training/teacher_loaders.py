"""Teachers built from CLIP checkpoints a site brings on disk (never from a hub).

- ``open_clip``: a directory in the Hugging Face layout open_clip uses for
  BiomedCLIP-style models (``open_clip_config.json`` + weights, tokenizer files
  beside them when the text tower is a Hugging Face model), or a single
  checkpoint file (CheXzero-style) with either ``model_name=`` naming a built-in
  open_clip architecture or an ``open_clip_config.json`` beside it.
- ``hf_clip``: a ``transformers`` ``CLIPModel`` directory (``config.json``,
  weights, tokenizer files, optionally ``preprocessor_config.json`` for the
  image mean / std).

FIXME: an open_clip model whose text tower is a Hugging Face model
(BiomedCLIP's ``hf_model_name``) makes open_clip call
``AutoConfig.from_pretrained(<hub name>)`` even when the weights are local; with
hub access off this works only if that config is in the local Hugging Face
cache, otherwise it fails as a TeacherLoadError. Only tiny CLIP-architecture
models saved by the tests were tried; no real BiomedCLIP / CheXzero files exist
on these machines.

Library errors are converted to :class:`TeacherLoadError` naming what was
expected, so a wrong path fails with a sentence instead of a stack of internals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.errors import TeacherLoadError
from training.teacher import (
    WEIGHT_SUFFIXES,
    Teacher,
    disable_hub_access,
    make_identity,
    sha256_of_weights,
)

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip clamps its learnt temperature at 100 during training; so do we.
MAX_LOGIT_SCALE = 100.0


def _three(
    values: Any, fallback: tuple[float, float, float]
) -> tuple[float, float, float]:
    if values is None:
        return fallback
    items = [
        float(v) for v in (values if isinstance(values, list | tuple) else [values])
    ]
    if len(items) == 1:
        items = items * 3

    return (items[0], items[1], items[2])


def _side(size: Any) -> int:
    """A square input side from an int or an (h, w) pair."""
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise TeacherLoadError(f"expected a square image input, got size {size}")
        return int(size[0])

    return int(size)


def _freeze(model: Any) -> Any:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    return model


def _require_exists(path: Path, kind: str, expected: str) -> None:
    if not path.exists():
        raise TeacherLoadError(
            f"{kind} teacher not found at {path}: expected {expected}"
        )


class OpenClipTeacher(Teacher):
    """An open_clip model (CLIP, CustomTextCLIP with a Hugging Face text tower)."""

    kind = "open_clip"

    def __init__(self, model: Any, tokenizer: Any, weights_sha256: str) -> None:
        super().__init__()
        import open_clip

        self.model = _freeze(model)
        self.tokenizer = tokenizer
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.input_size = _side(cfg.get("size", 224))
        self.model_mean = _three(cfg.get("mean"), OPENAI_CLIP_MEAN)
        self.model_std = _three(cfg.get("std"), OPENAI_CLIP_STD)
        scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 1.0
        self.logit_scale = min(scale, MAX_LOGIT_SCALE)
        self.identity = make_identity(self.kind, weights_sha256, self.input_size)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)))


def load_open_clip_teacher(
    path: Path, model_name: str | None = None
) -> OpenClipTeacher:
    """Load an open_clip teacher from a local directory or checkpoint file."""
    disable_hub_access()
    expected = (
        "a directory with open_clip_config.json and a weights file, or a checkpoint "
        "file with model_name=<open_clip architecture> or open_clip_config.json "
        "beside it"
    )
    _require_exists(path, "open_clip", expected)
    try:
        import open_clip
    except ImportError as error:
        raise TeacherLoadError("the open_clip teacher needs open-clip-torch") from error

    if path.is_dir():
        config_dir, checkpoint = path, None
        if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir()):
            raise TeacherLoadError(f"no weights file in {path}: expected {expected}")
    else:
        config_dir, checkpoint = path.parent, path
    has_config = (config_dir / "open_clip_config.json").is_file()
    if model_name is None and not has_config:
        raise TeacherLoadError(
            f"no open_clip_config.json in {config_dir}: expected {expected}"
        )

    try:
        if model_name is not None:
            model = open_clip.create_model(
                model_name, pretrained=str(checkpoint or path), device="cpu"
            )
            tokenizer = open_clip.get_tokenizer(model_name)
        else:
            local = f"local-dir:{config_dir}"
            # FIXME: for a checkpoint file open_clip first logs that the model is
            # "initialized randomly" (load_weights=False); the weights are loaded
            # on the next line. open_clip has no quieter way to build from a
            # config and a separately named file.
            model = open_clip.create_model(
                local, device="cpu", load_weights=checkpoint is None
            )
            if checkpoint is not None:
                open_clip.load_checkpoint(model, str(checkpoint), device="cpu")
            tokenizer = open_clip.get_tokenizer(local)
    except TeacherLoadError:
        raise
    except (
        Exception
    ) as error:  # open_clip raises bare RuntimeError / ValueError / OSError
        raise TeacherLoadError(
            f"could not build the open_clip teacher from {path} "
            f"({type(error).__name__}: {error}); expected {expected}"
        ) from error

    return OpenClipTeacher(model, tokenizer, sha256_of_weights(checkpoint or path))


class HfClipTeacher(Teacher):
    """A ``transformers`` ``CLIPModel`` with its own tokenizer."""

    kind = "hf_clip"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        weights_sha256: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.input_size = _side(model.config.vision_config.image_size)
        self.model_mean, self.model_std = mean, std
        self.logit_scale = min(float(model.logit_scale.exp()), MAX_LOGIT_SCALE)
        self.identity = make_identity(self.kind, weights_sha256, self.input_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=images))

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return _features(
            self.model.get_text_features(
                input_ids=tokens["input_ids"],
                attention_mask=tokens.get("attention_mask"),
            )
        )


def _features(output: Any) -> torch.Tensor:
    """Projected features, whether transformers returns a tensor or an output."""
    if isinstance(output, torch.Tensor):
        return output

    return output.pooler_output


def _image_norm(
    path: Path,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    config = path / "preprocessor_config.json"
    if not config.is_file():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    try:
        values = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TeacherLoadError(f"{config} is not valid JSON") from error

    return (
        _three(values.get("image_mean"), OPENAI_CLIP_MEAN),
        _three(values.get("image_std"), OPENAI_CLIP_STD),
    )


def load_hf_clip_teacher(path: Path) -> HfClipTeacher:
    """Load a ``transformers`` CLIP teacher from a local directory."""
    disable_hub_access()
    expected = "a transformers CLIP directory (config.json, weights, tokenizer files)"
    _require_exists(path, "hf_clip", expected)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise TeacherLoadError(f"no config.json in {path}: expected {expected}")
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir()):
        raise TeacherLoadError(f"no weights file in {path}: expected {expected}")

    try:
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as error:  # transformers raises OSError / ValueError / KeyError
        raise TeacherLoadError(
            f"could not build the hf_clip teacher from {path} "
            f"({type(error).__name__}: {error}); expected {expected}"
        ) from error
    mean, std = _image_norm(path)

    return HfClipTeacher(model, tokenizer, sha256_of_weights(path), mean, std)
