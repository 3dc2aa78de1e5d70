"""Tests for the teacher's class prompts and findings-to-caption builder."""

from __future__ import annotations

import numpy as np
import pytest

from training.prompts import (
    FINDING_VOCAB,
    captions_for,
    finding_vector,
    parse_findings,
)


def test_both_no_finding_spellings_mean_normal() -> None:
    """NIH "No Finding" and JSRT "No Nodule" map to the same normal concept."""
    nih = parse_findings("No Finding")
    jsrt = parse_findings("No Nodule")

    assert nih == jsrt == ("normal",)


def test_co_findings_are_kept_in_vocabulary_order() -> None:
    """Every known finding of a multi-finding value is kept, in a fixed order."""
    concepts = parse_findings("Pneumonia|Effusion|Pleural_Thickening")

    assert concepts == ("pneumonia", "effusion", "pleural thickening")


def test_finding_vector_is_multi_hot_over_the_vocabulary() -> None:
    """The vector has one 1 per finding and zeros elsewhere."""
    vector = finding_vector("Infiltration|Pneumonia")

    assert vector.shape == (len(FINDING_VOCAB),)
    assert vector.sum() == 2
    assert vector[FINDING_VOCAB.index("pneumonia")] == 1
    assert vector[FINDING_VOCAB.index("infiltration")] == 1


def test_unknown_findings_are_ignored_not_guessed() -> None:
    """A finding outside the vocabulary is dropped; alone it means normal."""
    vector = finding_vector("Hernia")

    assert np.array_equal(vector, finding_vector("No Finding"))


@pytest.mark.parametrize(
    "findings", ["Edema|Infiltration|Pneumonia", "Nodule", "No Finding"]
)
def test_captions_are_varied_and_deterministic(findings: str) -> None:
    """Captions differ from one another but repeat exactly for the same seed."""
    first = captions_for(findings, count=6, seed=3)
    again = captions_for(findings, count=6, seed=3)

    assert first == again
    assert len(first) == 6
    assert len(set(first)) >= 4


def test_captions_name_every_co_finding() -> None:
    """Each caption for a multi-finding image mentions each finding."""
    captions = captions_for("Effusion|Pneumonia", count=8)

    for caption in captions:
        assert "pneumonia" in caption
        assert "effusion" in caption or "pleural fluid" in caption
