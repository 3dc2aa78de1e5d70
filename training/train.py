"""Distil a student from the teacher's soft labels and the ground truth.

One command trains one student and keeps its best checkpoint on val::

    python -m training.train --out-dir runs/kd --alpha 0.7 --temperature 4
    python -m training.train --out-dir runs/ce --alpha 0          # CE baseline
    torchrun --nproc_per_node 2 -m training.train --out-dir runs/kd-ddp

Steps: read the manifest, keep ``label_fraction`` of the train labels (the
rest train on the KD term alone; a CE-only run drops them), compute or read
the cached teacher soft labels, then train with the hybrid loss of
:mod:`training.losses`. After every epoch the val macro AUC decides whether
``best.pt`` is replaced; ``config.json`` (resolved) and ``history.json`` sit
beside it. ``best.pt`` holds ``{"state_dict", "arch", "labels", "input_size",
"config", "val_metrics"}``, the format ``training.export`` reads.

Under ``torchrun`` the same code runs DistributedDataParallel with the gloo
backend (CPU): each process sees its shard of the train set through a
``DistributedSampler`` (so the global batch is ``batch_size * world_size``),
rank 0 alone computes soft labels, evaluates val and writes files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from training import metrics
from training.config import TrainConfig, add_arguments, from_arguments
from training.data import (
    Augmentation,
    CxrDataset,
    ManifestRow,
    apply_label_fraction,
    class_weights,
    read_manifest,
    select_split,
    summarise,
)
from training.errors import ConfigError, DataError
from training.losses import hybrid_loss
from training.softlabels import TeacherLike, compute_soft_labels
from training.student import build_student, count_parameters

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "best.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()

    return 0, 1


def init_distributed() -> bool:
    """Join the process group when started by ``torchrun``; True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")

    return True


def class_prompts_for(labels: Sequence[str]) -> dict[str, list[str]]:
    """The default prompt ensemble of each label, in label order."""
    from training.prompts import DEFAULT_CLASS_PROMPTS

    return {label: list(DEFAULT_CLASS_PROMPTS[label]) for label in labels}


def load_configured_teacher(config: TrainConfig) -> TeacherLike:
    """The teacher named by ``teacher_kind`` / ``teacher_path`` (hub access off)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from training.teacher import load_teacher

    return load_teacher(config.teacher_kind, config.teacher_path)


def teacher_logits_for(
    config: TrainConfig,
    rows: Sequence[ManifestRow],
    teacher: TeacherLike | None = None,
) -> tuple[np.ndarray, str]:
    """Soft labels for ``rows`` (cached on disk) and the teacher's identity.

    Rank 0 fills the cache first; the other ranks then read it, so the teacher
    runs once per image whatever the number of processes.
    """
    rank, world_size = world()
    teacher = teacher or load_configured_teacher(config)
    prompts = class_prompts_for(config.labels)

    def compute() -> np.ndarray:
        return compute_soft_labels(
            rows,
            teacher,
            prompts,
            cache_dir=config.softlabel_cache,
            batch_size=config.teacher_batch_size,
            progress=config.progress and rank == 0,
        )

    if world_size > 1 and rank != 0:
        dist.barrier()
        return compute(), teacher.identity

    logits = compute()
    if world_size > 1:
        dist.barrier()

    return logits, teacher.identity


def freeze_leading_blocks(student: nn.Module, blocks: int) -> nn.Module:
    """Freeze the first ``blocks`` children of ``student.body``; return them.

    Their parameters get no gradients, so backward stops before them, and the
    caller keeps them in eval mode so batch-norm statistics do not drift.
    """
    body = getattr(student, "body", None)
    if not isinstance(body, nn.Sequential) or blocks <= 0:
        return nn.Sequential()
    if blocks >= len(body):
        raise ConfigError(
            f"freeze_blocks must be below the backbone's {len(body)} blocks, "
            f"got {blocks}"
        )

    frozen = body[:blocks]
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    logger.info("froze the first %d backbone blocks", blocks)

    return frozen


def lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    """Linear warm-up then cosine decay to 0, as a factor of the peak LR."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: CxrDataset,
    batch_size: int = 64,
    channels_last: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, C)`` and label indices ``(N,)`` of a dataset, in eval mode."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs, targets = [], []
    for images, labels, _ in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs.append(model(images).float().numpy())
        targets.append(labels.numpy())
    model.train(was_training)

    return np.concatenate(outputs), np.concatenate(targets)


def score(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Val metrics used for model selection (macro AUC first)."""
    probs = metrics.softmax(logits)
    predicted = probs.argmax(axis=1)

    return {
        "macro_auc": metrics.macro_auc(labels, probs),
        "accuracy": metrics.accuracy(labels, predicted),
        "macro_f1": metrics.macro_f1(labels, predicted, probs.shape[1]),
        "nll": metrics.nll(logits, labels),
    }


def build_datasets(
    config: TrainConfig, teacher: TeacherLike | None = None
) -> tuple[CxrDataset, CxrDataset, str]:
    """Train set (augmented, with soft labels when distilling), val set, teacher id.

    At ``label_fraction < 1`` the dropped labels become unlabelled rows, which
    train on the KD term alone; a CE-only run (alpha 0) leaves them out.
    """
    rows = read_manifest(config.manifest, config.labels)
    train_rows = apply_label_fraction(
        select_split(rows, "train", config.max_images_per_split),
        config.label_fraction,
        config.seed,
    )
    if config.alpha == 0.0:
        train_rows = [row for row in train_rows if row.label]
    val_rows = select_split(rows, "val", config.max_images_per_split)
    if not train_rows or not val_rows:
        raise DataError(
            f"need train and val rows; got {len(train_rows)} train, {len(val_rows)} val"
        )

    # Soft labels: computed once per image and teacher setting, cached on disk.
    teacher_identity = ""
    soft = None
    if config.alpha > 0.0:
        soft, teacher_identity = teacher_logits_for(config, train_rows, teacher)

    augmentation = Augmentation.from_config(config) if config.augment else None
    train_set = CxrDataset(
        train_rows, config.labels, config.input_size, augmentation, soft, config.seed
    )
    val_set = CxrDataset(val_rows, config.labels, config.input_size)

    return train_set, val_set, teacher_identity


def train_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    weights: torch.Tensor | None,
    description: str,
    show: bool,
) -> dict[str, float]:
    """One pass over the (sharded) train set; mean losses and seconds taken."""
    started = time.perf_counter()
    sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0}
    bar = tqdm(loader, desc=description, disable=not show)
    for images, labels, teacher_logits in bar:
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        parts = hybrid_loss(
            model(images),
            labels,
            teacher_logits if config.alpha > 0 else None,
            config.alpha,
            config.temperature,
            weights,
        )
        optimiser.zero_grad(set_to_none=True)
        parts.total.backward()
        optimiser.step()
        schedule.step()

        sums["loss"] += float(parts.total.detach())
        sums["ce"] += float(parts.ce)
        sums["kd"] += float(parts.kd)
        bar.set_postfix(loss=f"{float(parts.total.detach()):.3f}")

    steps = max(1, len(loader))

    return {
        "train_seconds": round(time.perf_counter() - started, 2),
        "train_loss": sums["loss"] / steps,
        "train_ce": sums["ce"] / steps,
        "train_kd": sums["kd"] / steps,
    }


def train(config: TrainConfig, teacher: TeacherLike | None = None) -> dict[str, Any]:
    """Train one student as ``config`` says; return the best val result (rank 0).

    ``teacher`` overrides the configured one (tests pass a small stand-in).
    """
    distributed = init_distributed()
    rank, world_size = world()
    torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    out_dir = Path(config.out_dir)

    # Data: train rows (+ cached soft labels when distilling) and val rows.
    train_set, val_set, teacher_identity = build_datasets(config, teacher)
    train_rows, val_rows = train_set.rows, val_set.rows
    weights = (
        class_weights(train_rows, config.labels)
        if config.class_weighting == "balanced"
        else None
    )

    # Student, optimiser and schedule.
    torch.manual_seed(config.seed)
    student = build_student(config.arch, len(config.labels), config.pretrained)
    frozen = freeze_leading_blocks(student, config.freeze_blocks)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    model: nn.Module = DistributedDataParallel(student) if distributed else student

    sampler: Any
    if distributed:
        sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed)
    else:
        sampler = RandomSampler(
            train_set, generator=torch.Generator().manual_seed(config.seed)
        )
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler)
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    total_steps = config.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lr_lambda(total_steps, config.warmup_steps)
    )

    config.resolved = {
        "world_size": world_size,
        "global_batch_size": config.batch_size * world_size,
        "teacher_identity": teacher_identity,
        "class_weights": weights.tolist() if weights is not None else None,
        "train_rows": summarise(train_rows).get("train", {}),
        "val_rows": summarise(val_rows).get("val", {}),
        "parameters": count_parameters(student),
        "trainable_parameters": sum(
            p.numel() for p in student.parameters() if p.requires_grad
        ),
        "torch": torch.__version__,
    }
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.json")
        logger.info(
            "training %s: %d train rows (%d labelled), %d val, alpha=%s T=%s, "
            "%d process(es)",
            config.arch,
            len(train_rows),
            sum(1 for row in train_rows if row.label),
            len(val_rows),
            config.alpha,
            config.temperature,
            world_size,
        )

    best: dict[str, Any] = {"epoch": -1, "val": {"macro_auc": -math.inf}}
    history: list[dict[str, Any]] = []
    for epoch in range(config.epochs):
        train_set.set_epoch(epoch)
        if distributed:
            sampler.set_epoch(epoch)
        model.train()
        frozen.eval()  # frozen blocks keep their ImageNet BN statistics
        losses = train_epoch(
            model,
            loader,
            optimiser,
            schedule,
            config,
            weights,
            f"epoch {epoch + 1}/{config.epochs}",
            config.progress and rank == 0,
        )

        # Rank 0 scores val and keeps the best checkpoint; the others wait at
        # the next gradient all-reduce.
        if rank != 0:
            continue
        logits, targets = predict(student, val_set, channels_last=config.channels_last)
        val = score(logits, targets)
        record = {"epoch": epoch + 1, **losses, "val": val}
        history.append(record)
        logger.info(
            "epoch %d: loss %.4f, val macro AUC %.4f, acc %.3f (%.1f s)",
            epoch + 1,
            record["train_loss"],
            val["macro_auc"],
            val["accuracy"],
            losses["train_seconds"],
        )
        if val["macro_auc"] > best["val"]["macro_auc"]:
            best = {"epoch": epoch + 1, "val": val}
            save_checkpoint(out_dir / CHECKPOINT_NAME, student, config, val)
        (out_dir / "history.json").write_text(
            json.dumps(metrics.clean({"best": best, "epochs": history}), indent=2)
        )

    if distributed:
        dist.barrier()
        dist.destroy_process_group()

    return {"best": best, "epochs": history, "out_dir": str(out_dir)}


def save_checkpoint(
    path: Path, student: nn.Module, config: TrainConfig, val: dict[str, float]
) -> None:
    """Write ``best.pt`` in the format agreed with ``training.export``."""
    state = {
        "state_dict": {k: v.detach().clone() for k, v in student.state_dict().items()},
        "arch": config.arch,
        "labels": list(config.labels),
        "input_size": config.input_size,
        "config": json.loads(config.to_json()),
        "val_metrics": metrics.clean(val),
    }
    tmp = path.with_suffix(".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: flags mirror :class:`TrainConfig`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    train(from_arguments(args))


if __name__ == "__main__":
    main()
