"""The not-assessable gate: say "cannot assess" instead of guessing on wrong input.

Two kinds of evidence, both returning short reasons from a fixed vocabulary (they
also label a Prometheus counter, so they must never carry free text):

* the DICOM header, when the upload has one (:func:`header_reasons`): a modality
  that is not a projection radiograph, a body part that is not the chest, a
  lateral view;
* the image content, for every format (:func:`content_reasons`): how far the
  model's pooled features lie from the training images' features (a
  probabilistic-PCA Mahalanobis distance, :class:`ContentGate`), with parameters
  fitted by ``training.gate`` and stored in the model contract's ``gate``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.contract import ModelContract
from app.decode import DecodedImage
from app.errors import ContractError

logger = logging.getLogger(__name__)

REASON_MODALITY = "not a projection radiograph"
REASON_BODY_PART = "not a chest image"
REASON_VIEW = "lateral view"
REASON_AGE = "patient under 18 (the model is trained on adults)"
REASON_CONTENT = "image unlike the training data"

# Modalities that are projection radiographs (DICOM PS3.3 C.7.3.1.1.1).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE"})


def header_reasons(header: dict[str, str]) -> list[str]:
    """Reasons the acquisition header says the image is out of scope."""
    reasons: list[str] = []
    modality = header.get("modality", "").strip().upper()
    body_part = header.get("body_part", "").strip().upper()
    view = header.get("view_position", "").strip().upper()

    if modality and modality not in RADIOGRAPH_MODALITIES:
        reasons.append(REASON_MODALITY)
    if body_part and body_part not in CHEST_BODY_PARTS:
        reasons.append(REASON_BODY_PART)
    if view in LATERAL_VIEWS:
        reasons.append(REASON_VIEW)
    if header.get("age_group") == "child":
        reasons.append(REASON_AGE)

    return reasons


# --- the content gate ------------------------------------------------------------

GATE_KIND = "ppca-mahalanobis"
GATE_FORMAT = 1
TRANSFORMS = ("none", "sqrt-l2")


def transform_features(features: np.ndarray, transform: str) -> np.ndarray:
    """Map raw ``(N, F)`` features into the space the gate's Gaussian lives in.

    ``sqrt-l2`` (square root of the non-negative pooled activations, then unit
    length) evens out the heavy-tailed activations and removes overall
    activation strength; measured on the student it separates garbage from
    chest X-rays better than raw features (see ``docs/robustness.md``).
    """
    rows = np.atleast_2d(np.asarray(features, dtype=np.float64))
    if transform == "none":
        return rows

    root = np.sqrt(np.maximum(rows, 0.0))
    norms = np.linalg.norm(root, axis=1, keepdims=True)

    return root / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class ContentGate:
    """A Gaussian model of the training images' features, and a distance cut-off.

    Probabilistic PCA (Tipping & Bishop 1999): the ``k`` leading principal axes
    of the training features keep their own variances, every other direction
    shares one ``residual_variance``. The Mahalanobis distance under that model,

        d(f)^2 = sum_i (u_i . (f - mean))^2 / var_i + |residual|^2 / residual_var,

    is large both for an image that is extreme along the axes chest X-rays vary
    on and for one whose features leave that subspace (a photograph, noise).
    Images with ``d > threshold`` are not assessed. Features pass through
    :func:`transform_features` first; ``mean`` and ``basis`` live in that space.
    """

    mean: np.ndarray  # (F,) float32
    basis: np.ndarray  # (k, F) float32, orthonormal rows
    variances: np.ndarray  # (k,) float32, > 0
    residual_variance: float
    threshold: float
    transform: str = "sqrt-l2"

    @property
    def n_features(self) -> int:
        """Length of the feature vector the gate was fitted on."""
        return int(self.mean.shape[0])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(N,)`` of ``(N, F)`` features (or one ``(F,)``)."""
        rows = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if rows.shape[1] != self.n_features:
            raise ContractError(
                f"the gate expects {self.n_features} features, the model gives "
                f"{rows.shape[1]}"
            )

        centred = transform_features(rows, self.transform) - self.mean
        coords = centred @ self.basis.T.astype(np.float64)  # (N, k)
        residual = centred - coords @ self.basis.astype(np.float64)  # (N, F)
        inside = (coords**2 / self.variances).sum(axis=1)
        outside = (residual**2).sum(axis=1) / self.residual_variance

        return np.sqrt(inside + outside)

    def to_json(self) -> dict[str, Any]:
        """The compact ``vlkd.gate`` form: arrays as base64 float16."""
        return {
            "kind": GATE_KIND,
            "format": GATE_FORMAT,
            "transform": self.transform,
            "n_features": self.n_features,
            "n_components": int(self.basis.shape[0]),
            "mean": _pack(self.mean),
            "basis": _pack(self.basis),
            "variances": [float(v) for v in self.variances],
            "residual_variance": float(self.residual_variance),
            "threshold": float(self.threshold),
        }


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(array.astype("<f2").tobytes()).decode("ascii")


def _unpack(text: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(str(text), validate=True)
        array = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    except (binascii.Error, ValueError) as error:
        raise ContractError(f"gate field {name!r} is not base64 float16") from error
    if array.size != int(np.prod(shape)):
        raise ContractError(
            f"gate field {name!r} holds {array.size} values, expected {shape}"
        )

    return array.reshape(shape)


def parse_gate(gate: dict[str, Any]) -> ContentGate:
    """Validate the contract's ``vlkd.gate`` JSON; ``ContractError`` if unusable."""
    if gate.get("kind") != GATE_KIND or gate.get("format") != GATE_FORMAT:
        raise ContractError(
            f"gate kind {gate.get('kind')!r} format {gate.get('format')!r} is not "
            f"supported (this service reads {GATE_KIND!r} format {GATE_FORMAT})"
        )
    transform = gate.get("transform", "none")
    if transform not in TRANSFORMS:
        raise ContractError(
            f"gate transform {transform!r} is not one of {', '.join(TRANSFORMS)}"
        )
    try:
        n_features = int(gate["n_features"])
        k = int(gate["n_components"])
        variances = np.asarray(gate["variances"], dtype=np.float32)
        residual_variance = float(gate["residual_variance"])
        threshold = float(gate["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise ContractError(f"gate parameters are incomplete: {error}") from error

    scalars = np.array([residual_variance, threshold, *variances.tolist()])
    if not (0 < k < n_features and variances.shape == (k,)):
        raise ContractError(
            f"gate needs 0 < n_components < n_features and one variance per "
            f"component; got k={k}, F={n_features}, {variances.size} variances"
        )
    if not np.all(np.isfinite(scalars)) or scalars.min() <= 0:
        raise ContractError("gate variances and threshold must be positive numbers")

    return ContentGate(
        mean=_unpack(gate.get("mean"), (n_features,), "mean"),
        basis=_unpack(gate.get("basis"), (k, n_features), "basis"),
        variances=variances,
        residual_variance=residual_variance,
        threshold=threshold,
        transform=transform,
    )


# Parsed gates by the id of their JSON dict; the dict is kept alive beside its
# parse so the id cannot be reused while the entry exists.
_PARSED: dict[int, tuple[dict[str, Any], ContentGate]] = {}


def compiled_gate(gate: dict[str, Any]) -> ContentGate:
    """:func:`parse_gate`, once per contract (parsing decodes ~50 kB of base64)."""
    entry = _PARSED.get(id(gate))
    if entry is None or entry[0] is not gate:
        entry = (gate, parse_gate(gate))
        _PARSED.clear()  # one model per process: keep only the current gate
        _PARSED[id(gate)] = entry

    return entry[1]


def content_reasons(
    features: np.ndarray | None, gate: dict[str, Any] | None
) -> list[str]:
    """Reasons the image content is out of scope, from the model's ``features``.

    ``gate`` is the contract's ``vlkd.gate`` JSON, fitted on the training split
    by ``training.gate``. Returns ``[]`` when the model has no features output
    or no gate, so the service works with any model. A malformed gate raises
    ``ContractError``; call :func:`compiled_gate` at start-up to refuse it early.
    """
    if features is None or gate is None:
        return []

    content = compiled_gate(gate)
    distance = float(content.distance(features)[0])
    if not np.isfinite(distance) or distance > content.threshold:
        return [REASON_CONTENT]

    return []


def assess(
    decoded: DecodedImage, features: np.ndarray | None, contract: ModelContract
) -> list[str]:
    """Every reason this image should not get a label; ``[]`` means assessable."""
    reasons = header_reasons(decoded.header)
    reasons += [r for r in content_reasons(features, contract.gate) if r not in reasons]

    return reasons
