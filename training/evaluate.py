"""Evaluate a model honestly on one manifest split, through the service's input path.

``python -m training.evaluate --model models/vlkd-student.onnx --split test
--out reports/test`` decodes every image with ``app.decode.decode`` and
preprocesses it with ``app.preprocess.preprocess`` (exactly what the service
does), runs the ONNX file with onnxruntime (or a ``best.pt`` checkpoint with
torch), and writes ``metrics.json``, ``report.md``, ``predictions.csv`` and PNG
plots (ROC curves, reliability diagram, confusion matrix).

Because every nodule image comes from JSRT and every pneumonia image from NIH,
the overall numbers can be won by recognising the source. The report therefore
also gives the nodule AUC *within JSRT* (nodule vs JSRT normal) and every
metric by source and by view (AP / PA).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.contract import ModelContract, from_metadata
from app.decode import decode
from app.errors import ContractError, InputError, ModelError
from app.preprocess import PreprocessConfig, preprocess
from training.errors import DataError
from training.metrics import (
    ReliabilityBins,
    binary_auc,
    bootstrap_auc_ci,
    classification_summary,
    clean,
    reliability_bins,
    roc_points,
    softmax,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("VLKD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)
DEFAULT_MANIFEST = SHARED_DATA / "cxr3" / "manifest.csv"
JSRT = "JSRT"
CARD_FILE = "MODEL_CARD.md"


# --- the service's input path ------------------------------------------------


def service_input(path: Path, config: PreprocessConfig) -> np.ndarray:
    """One image file as the service would feed it to the model: ``(3, S, S)``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(
            f"an evaluation image listed in the manifest cannot be read "
            f"({error.strerror})"
        ) from error
    try:
        pixels = decode(data).pixels
    except InputError as error:
        raise DataError(f"an evaluation image cannot be decoded: {error}") from error

    return preprocess(pixels, config)


# --- manifests -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One labelled image of a manifest split."""

    path: Path
    image: str  # path relative to the manifest, for the predictions table
    label: int
    source: str
    view: str


def read_cases(
    manifest: Path,
    split: str,
    labels: Sequence[str],
    limit: int | None = None,
) -> list[Case]:
    """Labelled rows of ``split`` (unlabelled rows are skipped), in file order.

    ``limit`` keeps an evenly spread subset of that many rows, so a quick run
    still sees every source and class.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest not found: expected a CSV file at {manifest}")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"image", "label", "split"} <= set(rows[0]):
        raise DataError(
            f"manifest needs columns image, label, split; got {sorted(rows[0])}"
        )

    index = {name: i for i, name in enumerate(labels)}
    cases = []
    for row in rows:
        if row["split"] != split or not row["label"]:
            continue
        if row["label"] not in index:
            raise DataError(
                f"manifest label {row['label']!r} is not one of the model's {labels}"
            )
        cases.append(
            Case(
                path=manifest.parent / row["image"],
                image=row["image"],
                label=index[row["label"]],
                source=row.get("source", "") or "unknown",
                view=row.get("view", "") or "unknown",
            )
        )
    if not cases:
        raise DataError(f"manifest has no labelled rows in split {split!r}")

    if limit is not None and 0 < limit < len(cases):
        picks = np.linspace(0, len(cases) - 1, limit).round().astype(int)
        cases = [cases[i] for i in sorted(set(picks.tolist()))]

    return cases


# --- models ----------------------------------------------------------------------

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoadedModel:
    """A model ready to score preprocessed batches, with what it expects."""

    logits: LogitsFn  # (N, 3, S, S) float32 -> (N, C) raw logits
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    temperature: float
    description: str


def onnx_session(path: Path, threads: int = 2) -> tuple[Any, ModelContract]:
    """An onnxruntime CPU session for ``path`` and the vlkd contract it carries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelError(f"onnxruntime cannot load {path}: {error}") from error

    return session, from_metadata(session.get_modelmeta().custom_metadata_map)


def load_onnx(path: Path, threads: int = 2) -> LoadedModel:
    """An ONNX file with a vlkd contract, run by onnxruntime on CPU."""
    session, contract = onnx_session(path, threads)

    def logits(batch: np.ndarray) -> np.ndarray:
        (out,) = session.run([contract.logits_output], {contract.input_name: batch})
        return np.asarray(out)

    return LoadedModel(
        logits=logits,
        labels=contract.labels,
        preprocess=contract.preprocess,
        temperature=contract.calibration_temperature,
        description=f"{contract.model_name} {contract.model_version} (onnx)",
    )


def load_torch(path: Path, temperature: float = 1.0) -> LoadedModel:
    """A ``best.pt`` checkpoint, run by torch on CPU."""
    import torch

    from training.export import load_checkpoint

    checkpoint = load_checkpoint(path)
    student = checkpoint.student.eval()

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return student(torch.from_numpy(batch)).numpy()

    return LoadedModel(
        logits=logits,
        labels=checkpoint.labels,
        preprocess=PreprocessConfig(size=checkpoint.input_size),
        temperature=temperature,
        description=f"{checkpoint.arch} checkpoint",
    )


def load_model(path: Path, temperature: float | None = None) -> LoadedModel:
    """ONNX (``.onnx``) or torch checkpoint (anything else) by file suffix.

    ``temperature`` overrides the ONNX contract's; a checkpoint defaults to 1.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix == ".onnx":
        model = load_onnx(path)
        if temperature is not None:
            model.temperature = temperature
        return model

    return load_torch(path, 1.0 if temperature is None else temperature)


def predict_logits(
    model: LoadedModel,
    cases: Sequence[Case],
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Raw ``(N, C)`` logits for ``cases``, through decode + preprocess."""
    batches: Iterable[int] = range(0, len(cases), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch")

    outputs = []
    for start in batches:
        chunk = cases[start : start + batch_size]
        images = np.stack([service_input(c.path, model.preprocess) for c in chunk])
        outputs.append(model.logits(images))

    return np.concatenate(outputs).astype(np.float64)


# --- the report --------------------------------------------------------------------


def _groups(cases: Sequence[Case], key: str) -> dict[str, np.ndarray]:
    values = np.array([getattr(c, key) for c in cases])
    return {name: np.flatnonzero(values == name) for name in sorted(set(values))}


def nodule_within_jsrt(
    cases: Sequence[Case],
    probs: np.ndarray,
    labels: Sequence[str],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Nodule vs normal among JSRT images only: the source-free nodule number."""
    if "nodule" not in labels or "normal" not in labels:
        return {}
    nodule, normal = labels.index("nodule"), labels.index("normal")
    keep = [
        i
        for i, c in enumerate(cases)
        if c.source.startswith(JSRT) and c.label in (nodule, normal)
    ]
    target = np.array([cases[i].label == nodule for i in keep], dtype=bool)
    scores = probs[keep, nodule] if keep else np.zeros(0)

    low, high = bootstrap_auc_ci(target, scores, n_resamples, seed)
    return {
        "auc": binary_auc(target, scores) if keep else float("nan"),
        "auc_ci95": [low, high],
        "n_nodule": int(target.sum()),
        "n_normal": int((~target).sum()),
    }


def compute_report(
    cases: Sequence[Case],
    logits: np.ndarray,
    labels: Sequence[str],
    temperature: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number of the evaluation, as a JSON-ready dict (``nan`` -> ``None``)."""
    probs = softmax(logits, temperature)
    truth = np.array([c.label for c in cases])
    names = tuple(labels)

    report: dict[str, Any] = {
        "n": len(cases),
        "labels": list(names),
        "temperature": temperature,
        "n_bootstrap": n_resamples,
        "seed": seed,
        "overall": classification_summary(truth, probs, names, n_resamples, seed),
        "nodule_within_jsrt": nodule_within_jsrt(
            cases, probs, names, n_resamples, seed
        ),
        "by_source": {},
        "by_view": {},
    }
    for key, target in (("source", "by_source"), ("view", "by_view")):
        for name, index in _groups(cases, key).items():
            report[target][name] = classification_summary(
                truth[index], probs[index], names, n_resamples, seed
            )

    return clean(report)


def headline_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The compact subset of a report that travels in the model file and card.

    Keeps the overall metrics with per-class AUC intervals, the within-JSRT
    nodule AUC, and macro AUC / accuracy by source and view; drops confusion
    matrices and subgroup detail, which stay in the full report.
    """
    overall = {key: value for key, value in report["overall"].items()}
    overall.pop("confusion_matrix", None)

    def brief(summary: dict[str, Any]) -> dict[str, Any]:
        return {k: summary[k] for k in ("n", "macro_auc", "accuracy", "macro_f1")}

    return {
        "split": report.get("split"),
        "temperature": report.get("temperature"),
        "overall": overall,
        "nodule_within_jsrt": report.get("nodule_within_jsrt", {}),
        "by_source": {k: brief(v) for k, v in report["by_source"].items()},
        "by_view": {k: brief(v) for k, v in report["by_view"].items()},
    }


def _markdown_row(name: str, summary: dict[str, Any], labels: Sequence[str]) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    aucs = []
    for label in labels:
        entry = summary["per_class"][label]
        low, high = entry["auc_ci95"]
        aucs.append(f"{fmt(entry['auc'])} [{fmt(low)}, {fmt(high)}]")

    return (
        f"| {name} | {summary['n']} | {fmt(summary['macro_auc'])} | "
        f"{fmt(summary['accuracy'])} | {fmt(summary['macro_f1'])} | "
        f"{fmt(summary['ece'])} | " + " | ".join(aucs) + " |"
    )


def render_markdown(report: dict[str, Any], title: str) -> str:
    """``report.md``: the tables a reader needs, with the confounds up front."""
    labels = report["labels"]
    header = (
        "| group | n | macro AUC | accuracy | macro F1 | ECE | "
        + " | ".join(f"AUC {name} [95 % CI]" for name in labels)
        + " |"
    )
    rule = "|---" * (6 + len(labels)) + "|"
    rows = [_markdown_row("all", report["overall"], labels)]
    rows += [
        _markdown_row(f"source: {name}", summary, labels)
        for name, summary in report["by_source"].items()
    ]
    rows += [
        _markdown_row(f"view: {name}", summary, labels)
        for name, summary in report["by_view"].items()
    ]

    within = report.get("nodule_within_jsrt") or {}
    within_line = "Nodule within JSRT: not computable (no JSRT nodule/normal pair)."
    if within.get("auc") is not None:
        low, high = within["auc_ci95"]
        ci = "n/a" if low is None else f"[{low:.3f}, {high:.3f}]"
        within_line = (
            f"**Nodule AUC within JSRT** (nodule vs JSRT normal, "
            f"{within['n_nodule']} vs {within['n_normal']} images): "
            f"{within['auc']:.3f} {ci}. This is the number that cannot be won by "
            "recognising the image source."
        )

    matrix = report["overall"]["confusion_matrix"]
    confusion = [
        "| true \\ predicted | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
        *[
            f"| {labels[i]} | " + " | ".join(str(v) for v in row) + " |"
            for i, row in enumerate(matrix)
        ],
    ]

    return "\n".join(
        [
            f"# Evaluation: {title}",
            "",
            f"{report['n']} images; probabilities = softmax(logits / "
            f"{report['temperature']:.3f}); AUC intervals: percentile bootstrap, "
            f"{report['n_bootstrap']} resamples, seed {report['seed']}. One-vs-rest "
            "AUCs are undefined (n/a) in groups that lack a class.",
            "",
            within_line,
            "",
            header,
            rule,
            *rows,
            "",
            "Confusion matrix (all images, argmax):",
            "",
            *confusion,
            "",
            "Plots: `roc.png`, `reliability.png`, `confusion.png`.",
            "",
        ]
    )


def write_plots(
    out_dir: Path,
    truth: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    matrix: list[list[int]],
) -> list[Path]:
    """ROC curves, reliability diagram and confusion matrix as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    for index, name in enumerate(labels):
        target = truth == index
        if target.all() or not target.any():
            continue
        points = roc_points(target, probs[:, index])
        auc = binary_auc(target, probs[:, index])
        ax.plot(points["fpr"], points["tpr"], label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right")
    written.append(_save(fig, out_dir / "roc.png"))

    bins: ReliabilityBins = reliability_bins(truth, probs, n_bins=10)
    fig, ax = plt.subplots(figsize=(5, 5))
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    used = bins.count > 0
    ax.bar(centres[used], bins.accuracy[used], width=0.09, label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1))
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    written.append(_save(fig, out_dir / "reliability.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(np.asarray(matrix), cmap="Blues")
    for (row, col), value in np.ndenumerate(np.asarray(matrix)):
        ax.text(col, row, str(value), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title("Confusion matrix")
    written.append(_save(fig, out_dir / "confusion.png"))

    return written


def _save(fig: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_predictions(
    path: Path, cases: Sequence[Case], probs: np.ndarray, labels: Sequence[str]
) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "source", "view", *labels])
        for case, row in zip(cases, probs, strict=True):
            writer.writerow(
                [case.image, labels[case.label], case.source, case.view]
                + [f"{p:.6f}" for p in row]
            )


def evaluate_model(
    model_path: Path,
    split: str = "test",
    out_dir: Path | None = None,
    *,
    manifest: Path = DEFAULT_MANIFEST,
    n_resamples: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    temperature: float | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model_path`` (ONNX or checkpoint) on ``split`` of ``manifest``.

    Writes ``metrics.json``, ``report.md``, ``predictions.csv`` and three PNG
    plots into ``out_dir`` when given, and returns the report dict.
    """
    model = load_model(model_path, temperature)
    cases = read_cases(manifest, split, model.labels, limit)

    started = time.perf_counter()
    logits = predict_logits(model, cases, batch_size, progress)
    seconds = time.perf_counter() - started

    report = compute_report(
        cases, logits, model.labels, model.temperature, n_resamples, seed
    )
    report["model"] = model.description
    report["split"] = split
    report["seconds_per_image"] = seconds / len(cases)
    logger.info(
        "evaluated %s on %d %s images: macro AUC %s, accuracy %s",
        model.description,
        len(cases),
        split,
        report["overall"]["macro_auc"],
        report["overall"]["accuracy"],
    )

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        probs = softmax(logits, model.temperature)
        truth = np.array([c.label for c in cases])
        (out_dir / "metrics.json").write_text(
            json.dumps(report, indent=2, sort_keys=True) + "\n"
        )
        title = f"{model.description}, split {split}"
        (out_dir / "report.md").write_text(render_markdown(report, title))
        _write_predictions(out_dir / "predictions.csv", cases, probs, model.labels)
        write_plots(
            out_dir, truth, probs, model.labels, report["overall"]["confusion_matrix"]
        )

    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: evaluate a model on a manifest split and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help=".onnx or best.pt")
    parser.add_argument("--split", default="test", help="manifest split to evaluate")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--limit", type=int, default=None, help="evenly spread subset")
    parser.add_argument(
        "--temperature", type=float, default=None, help="override calibration t"
    )
    parser.add_argument(
        "--attach",
        action="store_true",
        help="write the headline metrics into the evaluated .onnx file "
        "(vlkd.metrics and the card) and rewrite MODEL_CARD.md beside it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    try:
        report = evaluate_model(
            args.model,
            args.split,
            args.out,
            manifest=args.manifest,
            n_resamples=args.bootstrap,
            seed=args.seed,
            limit=args.limit,
            temperature=args.temperature,
            progress=True,
        )
        if args.attach:
            from training.export import attach_metrics

            if args.model.suffix != ".onnx":
                raise ModelError("--attach needs an .onnx model, not a checkpoint")
            attach_metrics(
                args.model, headline_metrics(report), args.model.parent / CARD_FILE
            )
    except (DataError, ModelError, ContractError) as error:
        logger.error("evaluation failed: %s", error)
        return 1

    print(json.dumps({k: report["overall"][k] for k in ("macro_auc", "accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
