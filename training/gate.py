"""Fit the not-assessable content gate on the student's features; store it in the model.

``python -m training.gate --model models/vlkd-student.onnx`` does, in order:

1. run the model on every image of the cxr3 manifest through the service's own
   input path (``app.decode`` then ``app.preprocess``), keeping the pooled
   ``features`` output;
2. fit a probabilistic-PCA Gaussian (:class:`app.gate.ContentGate`) on the
   *train* split's features;
3. set the distance threshold at a quantile of the *val* split's distances
   (default 0.98: about 2 % of val chest X-rays gated out, leaving room under
   the 5 % allowed on test);
4. measure what the gate does: rejection on train / val / test, and distances
   and verdicts for synthetic garbage (photograph, noise, near-uniform grey,
   gradient), the non-chest DICOMs' pixels with the header ignored, and the
   paediatric chest X-rays (with the model's own label for those);
5. write the gate into the model's ``vlkd.gate`` metadata, unless the test
   split loses more than ``--max-test-rejection`` (then nothing is written and
   the command exits 1). The full measurement goes to ``--report`` (JSON).

The service scores features with exactly the code used here
(:meth:`app.gate.ContentGate.distance`), reading the float16 parameters back
from the contract, so the numbers measured here are the ones it will see.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from app.contract import ModelContract
from app.decode import decode
from app.errors import ContractError, InputError, ModelError
from app.gate import (
    TRANSFORMS,
    ContentGate,
    header_reasons,
    parse_gate,
    transform_features,
)
from app.preprocess import preprocess
from training.errors import DataError
from training.evaluate import DEFAULT_MANIFEST, SHARED_DATA, onnx_session, read_cases

logger = logging.getLogger(__name__)

DEFAULT_COMPONENTS = 16
DEFAULT_VAL_QUANTILE = 0.98
DEFAULT_TRANSFORM = "sqrt-l2"
MAX_TEST_REJECTION = 0.05
SPLITS = ("train", "val", "test")
BATCH = 16
NON_CHEST_DICOMS = ("RG2_JPLL.dcm", "RG3_J2KI.dcm")


# --- the model, run the service's way ----------------------------------------


@dataclass
class FeatureModel:
    """An ONNX student with a features output, and its contract."""

    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # -> logits, features
    contract: ModelContract

    def embed(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, C)`` and features ``(N, F)`` of encoded images, in order."""
        logits, features = [], []
        for start in range(0, len(payloads), BATCH):
            tensors = np.stack(
                [
                    image_tensor(data, self.contract)
                    for data in payloads[start : start + BATCH]
                ]
            )
            batch_logits, batch_features = self.run(tensors)
            logits.append(batch_logits)
            features.append(batch_features)

        return np.concatenate(logits), np.concatenate(features)


def open_model(path: Path, threads: int = 2) -> FeatureModel:
    """Open ``path`` in onnxruntime; ``ModelError`` if it has no features output."""
    session, contract = onnx_session(path, threads)
    if not contract.features_output:
        raise ModelError(
            "the model's contract names no features output; the content gate needs "
            "the pooled features (re-export with training.export)"
        )
    names = [contract.logits_output, contract.features_output]

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = session.run(names, {contract.input_name: batch})
        return np.asarray(logits), np.asarray(features, dtype=np.float32)

    return FeatureModel(run=run, contract=contract)


def image_tensor(data: bytes, contract: ModelContract) -> np.ndarray:
    """One upload as the service feeds it to the model: ``(3, S, S)`` float32."""
    try:
        pixels = decode(data).pixels
    except InputError as error:
        raise DataError(f"an image for the gate cannot be decoded: {error}") from error

    return preprocess(pixels, contract.preprocess)


def split_payloads(manifest: Path, split: str, labels: Sequence[str]) -> list[bytes]:
    """The encoded bytes of every labelled image of ``split``."""
    return [case.path.read_bytes() for case in read_cases(manifest, split, labels)]


# --- fitting -------------------------------------------------------------------


def fit_gate(
    train: np.ndarray,
    n_components: int = DEFAULT_COMPONENTS,
    transform: str = DEFAULT_TRANSFORM,
) -> ContentGate:
    """Probabilistic PCA of ``(N, F)`` train features; threshold still unset (inf).

    The residual variance is the mean variance of the discarded directions (the
    maximum-likelihood estimate), so the distance stays finite and meaningful
    even when F exceeds the number of training images. ``mean`` and ``basis``
    are rounded to float16 here, as the contract stores them, so thresholds
    chosen on this gate hold for the stored one.
    """
    n, f = train.shape
    if not 0 < n_components < min(n, f):
        raise DataError(
            f"n_components must be in 1..{min(n, f) - 1} for {n} images of {f} "
            f"features, got {n_components}"
        )
    if transform not in TRANSFORMS:
        raise DataError(f"transform must be one of {TRANSFORMS}, got {transform!r}")

    data = transform_features(train, transform)
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    eigen = singular**2 / (n - 1)  # variance along each principal axis
    residual = float(eigen[n_components:].sum() / (f - n_components))
    if residual <= 0:
        raise DataError("train features have no variance outside the kept components")

    return ContentGate(
        mean=_float16(mean),
        basis=_float16(vt[:n_components]),
        variances=eigen[:n_components].astype(np.float32),
        residual_variance=residual,
        threshold=float("inf"),
        transform=transform,
    )


def _float16(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float16).astype(np.float32)


def with_threshold(gate: ContentGate, val: np.ndarray, quantile: float) -> ContentGate:
    """``gate`` with its threshold at the ``quantile`` of the val distances."""
    if not 0.5 <= quantile < 1:
        raise DataError(f"the val quantile must be in [0.5, 1), got {quantile}")
    threshold = float(np.quantile(gate.distance(val), quantile))

    return dataclasses.replace(gate, threshold=threshold)


def as_stored(gate: ContentGate) -> ContentGate:
    """The gate exactly as the service will read it back (float16 round trip)."""
    return parse_gate(json.loads(json.dumps(gate.to_json())))


def rejection_rate(gate: ContentGate, features: np.ndarray) -> float:
    """Fraction of ``features`` rows whose distance exceeds the threshold."""
    return float(np.mean(gate.distance(features) > gate.threshold))


# --- probes: what the gate must refuse, and what it should be asked about --------


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def synthetic_photograph(seed: int = 0, size: tuple[int, int] = (640, 480)) -> bytes:
    """A colourful outdoor scene as a JPEG: sky, sun, textured hills, trees, a house."""
    rng = np.random.default_rng(seed)
    width, height = size
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - y) * np.array([70, 130, 220]) + y * np.array([190, 220, 250])
    canvas = np.broadcast_to(sky, (height, width, 3)).copy()

    # Rolling hills with grass texture below a wavy horizon.
    x = np.arange(width)
    horizon = (0.55 + 0.06 * np.sin(x / 57.0 + rng.uniform(0, 6))) * height
    ground = np.arange(height)[:, None] > horizon[None, :]
    texture = rng.normal(0, 18, (height, width, 1))
    grass = np.array([60, 140, 50]) + texture * np.array([0.6, 1.0, 0.5])
    canvas = np.where(ground[:, :, None], grass, canvas)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(image)
    draw.ellipse((width - 150, 40, width - 80, 110), fill=(255, 220, 80))
    for _ in range(6):
        cx = int(rng.uniform(30, width - 30))
        base = int(horizon[cx]) + int(rng.uniform(10, 60))
        draw.rectangle((cx - 5, base - 50, cx + 5, base), fill=(100, 60, 30))
        draw.ellipse((cx - 30, base - 110, cx + 30, base - 40), fill=(30, 110, 40))
    draw.rectangle((200, 250, 300, 330), fill=(200, 60, 50))
    draw.polygon([(190, 250), (250, 200), (310, 250)], fill=(120, 40, 30))
    image = image.filter(ImageFilter.GaussianBlur(0.8))

    return _encode(image, "JPEG")


def noise_image(seed: int = 0, side: int = 512) -> bytes:
    """Uniform 8-bit noise as a PNG."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)

    return _encode(Image.fromarray(pixels), "PNG")


def near_uniform_grey(seed: int = 0, side: int = 512) -> bytes:
    """Mid grey with +-1 level of noise (an exactly uniform image gets a 422)."""
    rng = np.random.default_rng(seed)
    pixels = 128 + rng.integers(-1, 2, (side, side))

    return _encode(Image.fromarray(pixels.astype(np.uint8)), "PNG")


def grey_gradient(side: int = 512) -> bytes:
    """A smooth diagonal grey ramp: some range, no anatomy."""
    y, x = np.mgrid[0:side, 0:side]
    pixels = (x + y) * 255.0 / (2 * side - 2)

    return _encode(Image.fromarray(pixels.astype(np.uint8)), "PNG")


def synthetic_probes(seed: int = 0) -> dict[str, bytes]:
    """Garbage the gate must refuse, by name."""
    return {
        "photograph": synthetic_photograph(seed),
        "noise": noise_image(seed),
        "near_uniform_grey": near_uniform_grey(seed),
        "grey_gradient": grey_gradient(),
    }


def pixels_as_png(data: bytes) -> bytes:
    """Decode any upload and re-encode its pixels as a 16-bit PNG (no header)."""
    pixels = decode(data).pixels.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / max(high - low, 1e-12) * 65535

    return _encode(Image.fromarray(scaled.astype(np.uint16)), "PNG")


# --- measuring -------------------------------------------------------------------


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def probe_report(
    model: FeatureModel, gate: ContentGate, payloads: dict[str, bytes]
) -> dict[str, dict[str, Any]]:
    """Per named upload: content distance, gated or not, and the model's answer."""
    names = list(payloads)
    if not names:
        return {}
    logits, features = model.embed([payloads[name] for name in names])
    distances = gate.distance(features)
    probs = _softmax(logits, model.contract.calibration_temperature)

    report = {}
    for index, name in enumerate(names):
        header = decode(payloads[name]).header
        best = int(np.argmax(probs[index]))
        report[name] = {
            "distance": round(float(distances[index]), 3),
            "content_gated": bool(distances[index] > gate.threshold),
            "header_reasons": header_reasons(header),
            "model_label": model.contract.labels[best],
            "model_probability": round(float(probs[index, best]), 3),
        }

    return report


def measure(
    model: FeatureModel,
    gate: ContentGate,
    split_features: dict[str, np.ndarray],
    shared: Path = SHARED_DATA,
) -> dict[str, Any]:
    """Everything the gate does on the splits, the probes and the shifted data."""
    distances = {name: gate.distance(f) for name, f in split_features.items()}
    report: dict[str, Any] = {
        "threshold": round(gate.threshold, 3),
        "rejection": {
            name: round(float(np.mean(d > gate.threshold)), 4)
            for name, d in distances.items()
        },
        "split_distance_quantiles": {
            name: [round(float(q), 2) for q in np.quantile(d, [0.5, 0.95, 0.99, 1])]
            for name, d in distances.items()
        },
        "synthetic": probe_report(model, gate, synthetic_probes()),
    }

    non_chest = {
        f"{name} (pixels only)": pixels_as_png((shared / "dicom" / name).read_bytes())
        for name in NON_CHEST_DICOMS
        if (shared / "dicom" / name).is_file()
    }
    report["non_chest_without_header"] = probe_report(model, gate, non_chest)

    pediatric_dir = shared / "ood" / "pediatric"
    pediatric = {
        path.name: path.read_bytes() for path in sorted(pediatric_dir.glob("*.jpeg"))
    }
    if pediatric:
        report["pediatric"] = probe_report(model, gate, pediatric)

    return report


# --- the command -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: fit, measure, and (if the test split allows) store the gate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported ONNX file")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=SHARED_DATA,
        help="folder with dicom/ and ood/pediatric/ for the shifted-data probes",
    )
    parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    parser.add_argument("--transform", choices=TRANSFORMS, default=DEFAULT_TRANSFORM)
    parser.add_argument("--val-quantile", type=float, default=DEFAULT_VAL_QUANTILE)
    parser.add_argument("--max-test-rejection", type=float, default=MAX_TEST_REJECTION)
    parser.add_argument("--report", type=Path, help="write the measurements (JSON)")
    parser.add_argument(
        "--dry-run", action="store_true", help="measure only; do not touch the model"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    try:
        model = open_model(args.model)
        labels = model.contract.labels
        features = {}
        for split in SPLITS:
            _, features[split] = model.embed(
                split_payloads(args.manifest, split, labels)
            )
            logger.info("%s: %d feature vectors", split, len(features[split]))

        fitted = fit_gate(features["train"], args.components, args.transform)
        gate = as_stored(with_threshold(fitted, features["val"], args.val_quantile))
        report = measure(model, gate, features, args.shared_data)
        report["fit"] = {
            "n_components": args.components,
            "transform": args.transform,
            "val_quantile": args.val_quantile,
            "n_images": {split: len(f) for split, f in features.items()},
        }
    except (DataError, ModelError, InputError) as error:
        logger.error("gate not fitted: %s", error)
        return 1

    text = json.dumps(report, indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print(text)

    test_rejection = report["rejection"]["test"]
    if test_rejection > args.max_test_rejection:
        logger.error(
            "the gate would refuse %.1f %% of test chest X-rays (allowed %.1f %%); "
            "nothing written",
            100 * test_rejection,
            100 * args.max_test_rejection,
        )
        return 1
    if args.dry_run:
        return 0

    from training.export import write_metadata  # imports torch: only when writing

    try:
        write_metadata(args.model, {"vlkd.gate": json.dumps(gate.to_json())})
    except ContractError as error:
        logger.error("gate not written: %s", error)
        return 1
    logger.info(
        "gate written to %s: threshold %.2f, test rejection %.1f %%",
        args.model,
        gate.threshold,
        100 * test_rejection,
    )

    return 0


if __name__ == "__main__":
    sys.exit(main())
