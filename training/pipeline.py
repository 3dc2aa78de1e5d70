"""One command that reproduces the shipped model from the data and the teacher.

::

    python -m training.pipeline                  # about 20-40 min on 2 CPU cores
    python -m training.pipeline --epochs 1 --max-images-per-split 12 --no-ship

Steps, each logged with its duration in ``<out-dir>/pipeline.json``:

1. soft labels: the configured teacher scores every train and test image
   once (cached under ``cache/softlabels/``); its zero-shot test metrics are
   recorded on the way;
2. train the KD student (:func:`training.train.train`, defaults alpha 0.7,
   T 4), best checkpoint on val macro AUC;
3. calibrate a temperature on val and export to ONNX with its contract and
   model card (``training.export``);
4. fit the not-assessable gate on the exported file's train-split features,
   threshold on val, stored in the file as ``vlkd.gate`` (``training.gate``;
   skipped for smoke runs limited by ``--max-images-per-split``, which have
   too few images to fit it);
5. evaluate the ONNX file on the test split through the service's input path
   and write the headline metrics into the file and card
   (``training.evaluate --attach``);
6. copy ``vlkd-student.onnx`` and ``MODEL_CARD.md`` into ``models/``.

Every flag of ``python -m training.train`` is accepted; ``--out-dir``
defaults to ``runs/pipeline``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training import evaluate, export, gate
from training.config import TrainConfig, add_arguments, from_arguments
from training.data import ManifestRow, read_manifest, select_split
from training.errors import TrainingError
from training.metrics import clean
from training.softlabels import TeacherLike, compute_soft_labels
from training.train import CHECKPOINT_NAME, class_prompts_for, load_configured_teacher
from training.train import train as train_student

logger = logging.getLogger(__name__)

ONNX_NAME = "vlkd-student.onnx"
CARD_NAME = "MODEL_CARD.md"
DEFAULT_OUT_DIR = "runs/pipeline"
DEFAULT_MODELS_DIR = "models"
# The teacher's zero-shot numbers for the card; val is left out because on two
# CPU cores the teacher (320 px) costs about as much per image as a student
# training step.
ZERO_SHOT_SPLITS = ("test",)


class PipelineError(TrainingError):
    """Raised when a pipeline step (export, evaluation, shipping) fails."""


def teacher_zero_shot(
    config: TrainConfig,
    teacher: TeacherLike,
    split: str,
    limit: int | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Evaluate the teacher's zero-shot logits on ``split`` (cached soft labels).

    Uses the evaluation module's report, so the teacher's numbers are computed
    exactly as the student's are (within-JSRT nodule AUC, source, view).
    """
    cases = evaluate.read_cases(Path(config.manifest), split, config.labels, limit)
    rows = [ManifestRow(image=case.path, label="", split=split) for case in cases]
    logits = compute_soft_labels(
        rows,
        teacher,
        class_prompts_for(config.labels),
        cache_dir=config.softlabel_cache,
        batch_size=config.teacher_batch_size,
        progress=config.progress,
    )

    report = evaluate.compute_report(cases, logits, config.labels, 1.0, n_resamples)
    report["model"] = f"teacher {teacher.identity}"
    report["split"] = split

    return report


def _limit(config: TrainConfig) -> int | None:
    return config.max_images_per_split or None


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(handle)
    try:
        shutil.copyfile(source, tmp_name)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _timed(steps: dict[str, float], name: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    logger.info("pipeline step: %s", name)
    result = action()
    steps[name] = round(time.perf_counter() - started, 1)
    logger.info("pipeline step %s done in %.1f s", name, steps[name])

    return result


def run_pipeline(
    config: TrainConfig,
    models_dir: Path | str = DEFAULT_MODELS_DIR,
    ship: bool = True,
    teacher: TeacherLike | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Run the six steps; return a summary (also written to ``pipeline.json``)."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    summary: dict[str, Any] = {"config": json.loads(config.to_json()), "steps": steps}
    limit = _limit(config)

    # 1. Soft labels for every split, and the teacher's own zero-shot numbers.
    def soft_labels() -> dict[str, Any]:
        chosen = teacher or load_configured_teacher(config)
        rows = read_manifest(config.manifest, config.labels)
        compute_soft_labels(
            select_split(rows, "train", config.max_images_per_split),
            chosen,
            class_prompts_for(config.labels),
            cache_dir=config.softlabel_cache,
            batch_size=config.teacher_batch_size,
            progress=config.progress,
        )
        reports = {
            split: teacher_zero_shot(config, chosen, split, limit, n_resamples)
            for split in ZERO_SHOT_SPLITS
        }
        return {"teacher": chosen, "reports": reports}

    if config.alpha > 0:
        scored = _timed(steps, "soft_labels", soft_labels)
        teacher = scored["teacher"]
        summary["teacher_identity"] = scored["teacher"].identity
        summary["teacher_zero_shot"] = {
            split: evaluate.headline_metrics(report)
            for split, report in scored["reports"].items()
        }

    # 2. Train the student.
    result = _timed(steps, "train", lambda: train_student(config, teacher=teacher))
    summary["train"] = {"best": result["best"], "epochs": result["epochs"]}
    checkpoint = out_dir / CHECKPOINT_NAME

    # 3. Calibrate on val and export with the contract and card.
    staged = out_dir / ONNX_NAME
    export_args = [
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(staged),
        "--manifest",
        str(config.manifest),
        "--calibrate",
    ]
    if summary.get("teacher_identity"):
        export_args += ["--teacher", str(summary["teacher_identity"])]
    if _timed(steps, "export", lambda: export.main(export_args)) != 0:
        raise PipelineError("export failed; see the log above")

    # 4. Fit the not-assessable gate into the exported file.
    if limit:
        logger.info("gate not fitted: a smoke run has too few images for it")
    else:
        gate_args = [
            "--model",
            str(staged),
            "--manifest",
            str(config.manifest),
            "--report",
            str(out_dir / "reports" / "gate.json"),
        ]
        if _timed(steps, "gate", lambda: gate.main(gate_args)) != 0:
            raise PipelineError("gate fit failed; see the log above")

    # 5. Evaluate the exported file on test and attach the headline metrics.
    report_dir = out_dir / "reports" / "test"
    evaluate_args = [
        "--model",
        str(staged),
        "--split",
        "test",
        "--out",
        str(report_dir),
        "--manifest",
        str(config.manifest),
        "--bootstrap",
        str(n_resamples),
        "--attach",
    ]
    if limit:
        evaluate_args += ["--limit", str(limit)]
    if _timed(steps, "evaluate", lambda: evaluate.main(evaluate_args)) != 0:
        raise PipelineError("evaluation failed; see the log above")
    test_report = json.loads((report_dir / "metrics.json").read_text())
    summary["test"] = evaluate.headline_metrics(test_report)

    # 6. Ship the checked file and its card.
    if ship:
        models = Path(models_dir)
        _copy_atomic(staged, models / ONNX_NAME)
        _copy_atomic(out_dir / CARD_NAME, models / CARD_NAME)
        summary["shipped"] = str(models / ONNX_NAME)
        logger.info("shipped the student to %s", models / ONNX_NAME)

    summary["total_seconds"] = round(sum(steps.values()), 1)
    (out_dir / "pipeline.json").write_text(
        json.dumps(clean(summary), indent=2, sort_keys=True) + "\n"
    )

    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the training flags plus where to ship."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(out_dir=DEFAULT_OUT_DIR)
    parser.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    parser.add_argument("--ship", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    try:
        summary = run_pipeline(
            from_arguments(args), args.models_dir, args.ship, n_resamples=args.bootstrap
        )
    except TrainingError as error:
        logger.error("pipeline failed: %s", error)
        return 1
    print(json.dumps(clean({"test": summary["test"]["overall"]}), indent=2))

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
