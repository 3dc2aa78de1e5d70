"""One typed configuration for distillation training, saved beside every model.

:class:`TrainConfig` is the single source of every training choice. The
command line (``python -m training.train --help``) is generated from its
fields, so a flag and its default can never drift apart, and the resolved
config is written as ``config.json`` next to ``best.pt`` so a model can always
be traced back to what produced it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_LABELS: tuple[str, ...] = ("normal", "pneumonia", "nodule")
DEFAULT_MANIFEST = "../shared/data/cxr3/manifest.csv"
CLASS_WEIGHTINGS = ("balanced", "none")


@dataclass
class TrainConfig:
    """Everything that decides a training run; defaults are the shipped recipe."""

    # --- data ---
    manifest: str = DEFAULT_MANIFEST  # CSV in the cxr3 format; paths relative to it
    labels: tuple[str, ...] = DEFAULT_LABELS  # class order of the logits
    label_fraction: float = 1.0  # share of train labels kept (stratified), 0..1
    max_images_per_split: int = 0  # 0 = all; > 0 = first N per split (smoke runs)
    augment: bool = True  # mild geometric + photometric train augmentation
    max_rotation_deg: float = 7.0  # uniform in +/- degrees
    max_scale: float = 0.07  # zoom factor uniform in 1 +/- this
    max_translate: float = 0.05  # shift uniform in +/- this fraction of the side
    max_brightness: float = 0.08  # additive shift on the [0, 1] image, +/-
    max_contrast: float = 0.12  # multiplicative contrast, 1 +/- this
    max_gamma: float = 0.15  # gamma = exp(uniform(+/- this))
    class_weighting: str = "balanced"  # "balanced" CE weights n/(C*n_c) or "none"

    # --- student ---
    arch: str = "mobilenet_v2"  # training.student arch name
    pretrained: bool = True  # ImageNet initialisation (MobileNetV2 only)
    input_size: int = 224  # student input side in pixels
    # Leading backbone blocks kept frozen (weights and BN statistics): 4 = the
    # stem and the first three MobileNetV2 blocks (56 x 56 px and up), which
    # cost about a third of a training step and change little when fine-tuning
    # on a few hundred images; 0 trains everything.
    freeze_blocks: int = 4

    # --- distillation ---
    alpha: float = 0.7  # weight of the KD term; 0 = plain cross-entropy
    temperature: float = 4.0  # softmax temperature T of the KD term
    teacher_kind: str = "vlkd"  # training.teacher.load_teacher kind
    teacher_path: str = "models/teacher"  # teacher checkpoint file or directory
    softlabel_cache: str = "cache/softlabels"  # on-disk teacher-logit cache
    teacher_batch_size: int = 16  # images per teacher forward pass

    # --- optimisation ---
    epochs: int = 4  # passes over the training rows
    batch_size: int = 32  # images per step per process
    lr: float = 5e-4  # AdamW peak learning rate (cosine decay to 0 per step)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    warmup_steps: int = 10  # linear warm-up steps before the cosine decay
    seed: int = 0  # seeds torch, numpy, sampling, label subset and augmentation

    # --- runtime ---
    out_dir: str = "runs/kd"  # where best.pt, config.json, history.json go
    num_threads: int = 2  # torch intra-op threads per process
    channels_last: bool = True  # NHWC memory layout (about 1.3x faster on CPU)
    progress: bool = True  # tqdm progress bars

    # Filled in at run time, never from the command line.
    resolved: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        self.validate()

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the expected range."""
        checks = [
            ("label_fraction", 0.0 < self.label_fraction <= 1.0, "in (0, 1]"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("input_size", 16 <= self.input_size <= 2048, "16..2048 px"),
            ("labels", len(set(self.labels)) >= 2, "at least two distinct names"),
            ("max_images_per_split", self.max_images_per_split >= 0, ">= 0"),
            ("freeze_blocks", self.freeze_blocks >= 0, ">= 0"),
            (
                "class_weighting",
                self.class_weighting in CLASS_WEIGHTINGS,
                f"one of {CLASS_WEIGHTINGS}",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"{name} must be {expected}; got {getattr(self, name)!r}"
                )

    def to_json(self) -> str:
        """The config as indented JSON (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        """Write the resolved config to ``path`` (usually ``out_dir/config.json``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict, refusing unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config keys {unknown}; expected some of {known}"
            )

        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a config saved by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _field_type(config_field: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[config_field.name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per config field, defaults taken from the dataclass."""
    for config_field in dataclasses.fields(TrainConfig):
        if config_field.name == "resolved":
            continue
        flag = "--" + config_field.name.replace("_", "-")
        kind = _field_type(config_field)
        default = (
            config_field.default
            if config_field.default is not dataclasses.MISSING
            else None
        )
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default
            )
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, nargs="+", default=default)
        elif isinstance(kind, types.UnionType):
            parser.add_argument(flag, default=default)
        else:
            parser.add_argument(flag, type=kind, default=default)


def from_arguments(namespace: argparse.Namespace) -> TrainConfig:
    """Build a validated config from parsed ``add_arguments`` flags."""
    values = {
        f.name: getattr(namespace, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "resolved" and hasattr(namespace, f.name)
    }

    return TrainConfig(**values)
