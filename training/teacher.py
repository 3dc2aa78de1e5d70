"""The one teacher interface distillation uses, and the factory that builds it.

A teacher is a vision-language model: an image tower and a text tower that map
into one embedding space. For a batch of preprocessed images and a set of class
prompts it returns logits ``(N, C)``: the scaled cosine similarity between each
image embedding and each class embedding, where a class embedding is the
average of its prompts' normalised text embeddings, normalised again (a prompt
ensemble). The softmax of those logits is the soft label.

Three kinds, chosen by one setting::

    load_teacher("vlkd")                          # ours, models/teacher/
    load_teacher("open_clip", "/site/biomedclip")  # open_clip dir or checkpoint
    load_teacher("hf_clip", "/site/clip-dir")      # transformers CLIP dir

Images arrive as ``app.preprocess.preprocess`` makes them with
``PreprocessConfig(size=teacher.input_size)``: float32 ``(N, 3, S, S)``,
ImageNet mean / std. A teacher trained with another normalisation (CLIP's own
mean / std) converts internally, so callers never need to know.

Nothing here touches a network: hub access is switched off before any loader
imports ``transformers``, ``open_clip`` or ``sentence_transformers``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training.errors import TeacherInputError, TeacherLoadError

logger = logging.getLogger(__name__)

TEACHER_KINDS: tuple[str, ...] = ("vlkd", "open_clip", "hf_clip")

# Options each kind's loader accepts through ``load_teacher(**opts)``.
TEACHER_OPTIONS: dict[str, frozenset[str]] = {
    "vlkd": frozenset(),
    "open_clip": frozenset({"model_name"}),
    "hf_clip": frozenset(),
}

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VLKD_PATH = REPO_ROOT / "models" / "teacher"

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

# Images are encoded in chunks of this many to bound peak memory.
ENCODE_CHUNK = 32


def disable_hub_access() -> None:
    """Make Hugging Face libraries refuse any network look-up in this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def sha256_of_weights(path: Path) -> str:
    """Hex sha256 of a weights file, or of every weights file in a directory.

    For a directory the digest covers each weights file's name and content in
    sorted order, so renaming or swapping a file changes the identity.
    """
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
        )
    )
    if not files:
        raise TeacherLoadError(
            f"expected a weights file ({', '.join(WEIGHT_SUFFIXES)}) in {path}, "
            "found none"
        )

    digest = hashlib.sha256()
    for file in files:
        file_digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(file.name.encode() + b"\0" + file_digest.digest())

    return digest.hexdigest()


def make_identity(kind: str, weights_sha256: str, input_size: int) -> str:
    """Stable teacher identity for soft-label cache keys."""
    return f"{kind}:sha256={weights_sha256}:size={input_size}"


class Teacher(ABC):
    """A frozen vision-language teacher scoring class prompts for X-rays.

    Subclasses provide :meth:`encode_images` and :meth:`encode_texts` (raw,
    unnormalised embeddings) and set ``kind``, ``input_size``, ``identity``,
    ``logit_scale`` and, when their image tower expects another normalisation
    than ImageNet's, ``model_mean`` / ``model_std``.
    """

    kind: str
    input_size: int
    identity: str
    logit_scale: float
    model_mean: tuple[float, float, float] = IMAGENET_MEAN
    model_std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self) -> None:
        self._class_cache: dict[tuple[tuple[str, ...], ...], torch.Tensor] = {}

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images already in the model's own normalisation: ``(N, D)``."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed sentences: ``(len(texts), D)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r})"

    @torch.no_grad()
    def class_embeddings(
        self, class_prompts: Mapping[str, Sequence[str]]
    ) -> torch.Tensor:
        """Normalised ``(C, D)`` class embeddings from a prompt ensemble per class."""
        _check_prompts(class_prompts)
        key = tuple(tuple(prompts) for prompts in class_prompts.values())
        if key in self._class_cache:
            return self._class_cache[key]

        rows = []
        for prompts in class_prompts.values():
            embeddings = F.normalize(self.encode_texts(list(prompts)).float(), dim=-1)
            rows.append(F.normalize(embeddings.mean(dim=0), dim=-1))
        classes = torch.stack(rows)
        self._class_cache[key] = classes

        return classes

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, D)`` embeddings of ImageNet-normalised images."""
        self._check_images(images)
        model_input = self._renormalise(images.float())
        chunks = [
            self.encode_images(model_input[start : start + ENCODE_CHUNK]).float()
            for start in range(0, model_input.shape[0], ENCODE_CHUNK)
        ]

        return F.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def logits(
        self, images: torch.Tensor, class_prompts: Mapping[str, Sequence[str]]
    ) -> torch.Tensor:
        """Scaled cosine similarity ``(N, C)``, columns in ``class_prompts`` order."""
        classes = self.class_embeddings(class_prompts)
        embeddings = self.image_embeddings(images)

        return self.logit_scale * embeddings @ classes.T

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.input_size, self.input_size)
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = getattr(images, "shape", type(images).__name__)
            raise TeacherInputError(f"expected images (N, {expected}), got {shape}")
        if tuple(images.shape[1:]) != expected:
            raise TeacherInputError(
                f"expected images (N, 3, {self.input_size}, {self.input_size}) "
                f"(preprocess with size={self.input_size}), got {tuple(images.shape)}"
            )

    def _renormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Convert ImageNet-normalised input to the model's own mean / std."""
        if (self.model_mean, self.model_std) == (IMAGENET_MEAN, IMAGENET_STD):
            return images

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=images.dtype).view(1, 3, 1, 1)

        unit = images * column(IMAGENET_STD) + column(IMAGENET_MEAN)

        return (unit - column(self.model_mean)) / column(self.model_std)


def _check_prompts(class_prompts: Mapping[str, Sequence[str]]) -> None:
    if not isinstance(class_prompts, Mapping) or len(class_prompts) < 2:
        raise TeacherInputError(
            "expected class_prompts as a dict of at least two classes -> prompts, "
            f"got {type(class_prompts).__name__} of length {len(class_prompts or ())}"
        )
    for name, prompts in class_prompts.items():
        if isinstance(prompts, str) or not prompts:
            raise TeacherInputError(
                f"expected a non-empty list of prompt strings for class {name!r}, "
                f"got {prompts!r}"
            )
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise TeacherInputError(f"class {name!r} has an empty or non-text prompt")


def load_teacher(
    kind: str = "vlkd", path: str | Path | None = None, **opts: Any
) -> Teacher:
    """Build a frozen, eval-mode teacher of ``kind`` from local files only.

    ``path`` is the teacher directory (``vlkd``: default ``models/teacher/``),
    an open_clip directory with ``open_clip_config.json`` or a checkpoint file
    (``open_clip``), or a ``transformers`` CLIP directory (``hf_clip``).
    ``opts`` go to the loader (e.g. ``model_name`` for a bare open_clip
    checkpoint of a built-in architecture).
    """
    disable_hub_access()
    if kind not in TEACHER_KINDS:
        raise TeacherLoadError(
            f"unknown teacher kind {kind!r}; expected one of {', '.join(TEACHER_KINDS)}"
        )

    unknown = sorted(set(opts) - TEACHER_OPTIONS[kind])
    if unknown:
        raise TeacherLoadError(
            f"teacher kind {kind!r} takes options {sorted(TEACHER_OPTIONS[kind])}, "
            f"got unknown {unknown}"
        )

    if kind == "vlkd":
        from training.teacher_model import load_vlkd_teacher

        teacher: Teacher = load_vlkd_teacher(Path(path) if path else DEFAULT_VLKD_PATH)
    else:
        if path is None:
            raise TeacherLoadError(
                f"teacher kind {kind!r} needs a path to a local checkpoint or directory"
            )
        from training import teacher_loaders

        loader = (
            teacher_loaders.load_open_clip_teacher
            if kind == "open_clip"
            else teacher_loaders.load_hf_clip_teacher
        )
        teacher = loader(Path(path), **opts)

    logger.info("loaded teacher %s (input %d px)", teacher.kind, teacher.input_size)

    return teacher
