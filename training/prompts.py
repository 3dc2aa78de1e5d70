"""Text for the teacher: default class prompts and captions built from findings.

Two jobs, both about what the teacher reads:

- :data:`DEFAULT_CLASS_PROMPTS` gives several phrasings per class (a prompt
  ensemble) in label order; ``Teacher.logits`` averages their embeddings.
- :func:`captions_for` turns a manifest ``findings`` value (``"Effusion|Pneumonia"``,
  ``"No Finding"``, ``"Nodule"``, ...) into varied report-like sentences that
  name every finding, co-findings included, so training text is richer than
  the three class names. :func:`finding_vector` gives the multi-hot finding
  vector the semantic-matching loss compares.

"No Finding" (NIH) and "No Nodule" (JSRT) both mean a normal study here; they
map to the same concept so the text never tells the image source apart.
"""

from __future__ import annotations

import logging
import random

import numpy as np

logger = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("normal", "pneumonia", "nodule")

DEFAULT_CLASS_PROMPTS: dict[str, list[str]] = {
    "normal": [
        "a normal chest X-ray",
        "a chest radiograph with no acute cardiopulmonary abnormality",
        "clear lungs, no focal consolidation, effusion or nodule",
        "a normal frontal chest radiograph",
    ],
    "pneumonia": [
        "a chest X-ray showing signs of pneumonia",
        "a chest radiograph with airspace consolidation consistent with pneumonia",
        "pulmonary infiltrates suggesting pneumonia",
        "a frontal chest radiograph showing pneumonia",
    ],
    "nodule": [
        "a chest X-ray with a pulmonary nodule",
        "a chest radiograph showing a solitary lung nodule",
        "a small rounded opacity in the lung, a pulmonary nodule",
        "a frontal chest radiograph showing a lung nodule",
    ],
}

# Manifest finding names -> one concept each; both "no finding" spellings are normal.
FINDING_ALIASES: dict[str, str] = {
    "no finding": "normal",
    "no nodule": "normal",
    "normal": "normal",
    "pleural_thickening": "pleural thickening",
}

FINDING_VOCAB: tuple[str, ...] = (
    "normal",
    "pneumonia",
    "nodule",
    "infiltration",
    "atelectasis",
    "edema",
    "effusion",
    "cardiomegaly",
    "consolidation",
    "mass",
    "emphysema",
    "fibrosis",
    "pleural thickening",
    "pneumothorax",
)

# Several wordings per finding; "{}" templates below join them into sentences.
FINDING_PHRASES: dict[str, tuple[str, ...]] = {
    "pneumonia": ("pneumonia", "airspace disease consistent with pneumonia"),
    "nodule": ("a pulmonary nodule", "a lung nodule", "a solitary nodular opacity"),
    "infiltration": ("pulmonary infiltrates", "patchy infiltration"),
    "atelectasis": ("atelectasis", "subsegmental atelectasis"),
    "edema": ("pulmonary edema", "interstitial edema"),
    "effusion": ("a pleural effusion", "pleural fluid"),
    "cardiomegaly": ("cardiomegaly", "an enlarged cardiac silhouette"),
    "consolidation": ("consolidation", "focal airspace consolidation"),
    "mass": ("a lung mass", "a mass lesion"),
    "emphysema": ("emphysema", "hyperinflated emphysematous lungs"),
    "fibrosis": ("pulmonary fibrosis", "fibrotic changes"),
    "pleural thickening": ("pleural thickening", "thickened pleura"),
    "pneumothorax": ("a pneumothorax", "a collapsed lung with pleural air"),
}

NORMAL_CAPTIONS: tuple[str, ...] = (
    "a normal chest X-ray",
    "no acute cardiopulmonary abnormality",
    "the lungs are clear, no consolidation, effusion or nodule",
    "normal heart size and clear lungs",
    "a normal frontal chest radiograph without findings",
    "no focal opacity, no pleural effusion, no pneumothorax",
)

FINDING_TEMPLATES: tuple[str, ...] = (
    "a chest X-ray showing {}",
    "chest radiograph with {}",
    "findings: {}",
    "frontal chest radiograph demonstrating {}",
    "there is {}",
    "the lungs show {}",
)


def parse_findings(findings: str) -> tuple[str, ...]:
    """Split a manifest ``findings`` value into known concepts, in vocabulary order.

    Unknown names are kept out (and logged once a call) rather than guessed; an
    empty or all-unknown value means a normal study.
    """
    names = [part.strip().lower() for part in findings.split("|") if part.strip()]
    concepts = {FINDING_ALIASES.get(name, name) for name in names}
    unknown = sorted(concepts - set(FINDING_VOCAB))
    if unknown:
        logger.warning("ignoring unknown findings %s", unknown)

    known = [concept for concept in FINDING_VOCAB if concept in concepts]

    return tuple(known) if known else ("normal",)


def finding_vector(findings: str) -> np.ndarray:
    """Multi-hot float32 vector over :data:`FINDING_VOCAB` for one findings value."""
    concepts = set(parse_findings(findings))

    return np.array([float(c in concepts) for c in FINDING_VOCAB], dtype=np.float32)


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]

    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions_for(findings: str, count: int = 8, seed: int = 0) -> list[str]:
    """Return ``count`` distinct-as-possible captions naming every finding.

    Deterministic for a given ``seed``: the training set precomputes text
    embeddings for these once, so the captions must not change between runs.
    """
    concepts = [c for c in parse_findings(findings) if c != "normal"]
    rng = random.Random(f"{findings}|{seed}")
    if not concepts:
        pool = list(NORMAL_CAPTIONS)
        rng.shuffle(pool)
        return [pool[i % len(pool)] for i in range(count)]

    captions: list[str] = []
    attempts = 0
    while len(captions) < count and attempts < count * 10:
        attempts += 1
        order = concepts[:]
        rng.shuffle(order)
        phrases = [rng.choice(FINDING_PHRASES[concept]) for concept in order]
        caption = rng.choice(FINDING_TEMPLATES).format(_join(phrases))
        if caption not in captions:
            captions.append(caption)

    while len(captions) < count:
        captions.append(captions[len(captions) % max(len(captions), 1)])

    return captions
