"""The model card: what the shipped model is for, what it learned from, how well
it does, and where it fails.

:func:`build_card` makes a JSON-ready dict that travels inside the ONNX file
(``vlkd.card``) and that the service can show; :func:`render_markdown` turns
the same dict into ``models/MODEL_CARD.md``, so the two never disagree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INTENDED_USE = (
    "Triage aid for adult frontal (PA / AP) chest X-rays: it orders a worklist so "
    "that studies likely to show pneumonia or a lung nodule are read sooner. It is "
    "not a diagnosis and must not be used to rule disease in or out; every study "
    "is still read by a qualified reader."
)

OUT_OF_SCOPE = [
    "Children: the training images are of adults; paediatric chests differ.",
    "Lateral views, non-chest radiographs, CT, photographs or screenshots.",
    "Any diagnosis, rule-out or unsupervised reporting.",
    "Findings other than pneumonia and lung nodule (the model knows three classes "
    "only and says nothing about effusion, pneumothorax, fractures, lines, ...).",
]

KNOWN_LIMITATIONS = [
    "Source confound: every nodule image comes from JSRT (digitised film, PA) and "
    "every pneumonia image from NIH ChestX-ray14. A model can score well overall "
    "by recognising the source rather than the disease; the nodule AUC *within* "
    "JSRT (nodule vs JSRT normal) is the honest nodule number and is reported "
    "separately.",
    "NIH labels were text-mined from reports (about 90 % accurate) and pneumonia "
    "images often carry co-findings (infiltration, effusion), so the pneumonia "
    "class is noisy and partly means 'abnormal NIH film'.",
    "View skew: about 68 % of NIH normals are AP against 45 % of NIH pneumonias; "
    "the model may use the view as a shortcut. Results by view are reported.",
    "Small data: about 1,000 images and only 23 nodule test images, so the "
    "confidence intervals are wide.",
    "Paediatric and non-chest inputs are out of distribution: the classifier will "
    "still output confident-looking probabilities for them. The service's "
    "not-assessable gate refuses non-chest DICOM headers, DICOM patients under 18, "
    "laterals marked in the header and images far from the training data, but it "
    "is not a paediatric filter: it let 5 of the 8 children's PNG/JPEG images in "
    "ood/pediatric through (docs/robustness.md).",
    "Orientation is not checked: a chest image rotated by 90 degrees still got a "
    "confident label in a manual test; send images as the modality displays them.",
    "JSRT nodules are often subtle (subtlety 1-2); small or subtle nodules are "
    "missed more often.",
    "Calibration was fitted on the validation split of the same two sources; "
    "probabilities on other hospitals' images may be over- or under-confident.",
]


def build_card(
    *,
    model_name: str,
    model_version: str,
    labels: list[str] | tuple[str, ...],
    input_size: int,
    arch: str,
    teacher: str,
    kd_alpha: float,
    kd_temperature: float,
    training_data: dict[str, Any],
    metrics: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card as a JSON-ready dict (no ``nan``; every key documented)."""
    card: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "architecture": arch,
        "labels": list(labels),
        "input": f"{input_size}x{input_size} grayscale replicated to 3 channels",
        "intended_use": INTENDED_USE,
        "out_of_scope": OUT_OF_SCOPE,
        "training": {
            "method": (
                "knowledge distillation from a vision-language teacher: "
                "(1 - alpha) * CE + alpha * T^2 * KL(teacher || student)"
                if kd_alpha > 0
                else "plain cross-entropy on the labels (alpha = 0, no distillation)"
            ),
            "teacher": teacher,
            "kd_alpha": kd_alpha,
            "kd_temperature": kd_temperature,
            "data": training_data,
        },
        "calibration": calibration or {},
        "metrics": metrics,
        "known_limitations": KNOWN_LIMITATIONS,
    }

    return _finite(card)


def json_safe_card(card: dict[str, Any]) -> dict[str, Any]:
    """An edited card made JSON-safe again (``nan`` / ``inf`` become ``None``)."""
    return dict(_finite(card))


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None

    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if value is None:
        return "n/a"

    return str(value)


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """A readable table of the headline metrics, whatever subset is present."""
    lines = ["| metric | value |", "|---|---|"]
    if "overall" not in metrics:
        # Not an evaluation report (e.g. validation metrics from training).
        for key, value in sorted(metrics.items()):
            values = value if isinstance(value, dict) else {"": value}
            for sub, item in sorted(values.items()):
                if not isinstance(item, dict | list):
                    lines.append(f"| {key} {sub} | {_fmt(item)} |".replace("  ", " "))
        return lines

    if "split" in metrics:
        lines.append(f"| split | {metrics['split']} |")
    overall = metrics["overall"]
    for key in ("n", "macro_auc", "accuracy", "macro_f1", "ece"):
        if key in overall:
            lines.append(f"| {key} | {_fmt(overall[key])} |")
    for name, values in overall.get("per_class", {}).items():
        low, high = values.get("auc_ci95", [None, None])
        lines.append(
            f"| AUC {name} (one-vs-rest) [95 % CI] | {_fmt(values.get('auc'))} "
            f"[{_fmt(low)}, {_fmt(high)}] |"
        )
    within = metrics.get("nodule_within_jsrt")
    if within:
        low, high = within.get("auc_ci95", [None, None])
        lines.append(
            f"| AUC nodule within JSRT [95 % CI] | {_fmt(within.get('auc'))} "
            f"[{_fmt(low)}, {_fmt(high)}] |"
        )
    for group in ("by_source", "by_view"):
        for name, values in metrics.get(group, {}).items():
            lines.append(
                f"| {group.replace('_', ' ')}: {name} (n={values.get('n')}) | "
                f"macro AUC {_fmt(values.get('macro_auc'))}, "
                f"accuracy {_fmt(values.get('accuracy'))} |"
            )

    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` text for a card made by :func:`build_card`."""
    training = card.get("training", {})
    lines = [
        f"# Model card: {card.get('model_name')} {card.get('model_version')}",
        "",
        f"Architecture: {card.get('architecture')}; input: {card.get('input')}; "
        f"classes: {', '.join(card.get('labels', []))}.",
        "",
        "## Intended use",
        "",
        card.get("intended_use", INTENDED_USE),
        "",
        "Out of scope:",
        "",
        *[f"- {item}" for item in card.get("out_of_scope", [])],
        "",
        "## Training",
        "",
        f"- Method: {training.get('method')}",
        f"- Teacher: {training.get('teacher')}",
        f"- alpha = {training.get('kd_alpha')}, T = {training.get('kd_temperature')}",
        "- Data:",
        "",
        "```json",
        json.dumps(training.get("data", {}), indent=2, sort_keys=True),
        "```",
        "",
        "## Calibration",
        "",
    ]
    calibration = card.get("calibration") or {}
    if calibration:
        lines.append(
            f"Temperature t = {_fmt(calibration.get('temperature'))} fitted on the "
            f"validation split by NLL; ECE {_fmt(calibration.get('ece_before'))} -> "
            f"{_fmt(calibration.get('ece_after'))}. Probabilities are "
            "softmax(logits / t)."
        )
    else:
        lines.append("Not calibrated (t = 1).")
    lines += [
        "",
        "## Metrics",
        "",
        *_metrics_lines(card.get("metrics", {})),
        "",
        "Full evaluation (by source, by view, plots): see the evaluation report "
        "written by `python -m training.evaluate` and `docs/evaluation.md`.",
        "",
        "## Known limitations",
        "",
        *[f"- {item}" for item in card.get("known_limitations", [])],
        "",
    ]

    return "\n".join(lines)


def public_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)

    return 0o666 & ~umask


def write_model_card(card: dict[str, Any], path: Path) -> Path:
    """Write ``render_markdown(card)`` to ``path`` atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_markdown(card))
        os.chmod(tmp_name, public_file_mode())  # mkstemp makes it owner-only
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.info("model card written")

    return path
