"""Tests for the manifest-driven training dataset (training/data.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from app.decode import decode
from app.preprocess import PreprocessConfig, preprocess
from training.config import DEFAULT_LABELS
from training.data import (
    UNLABELLED,
    Augmentation,
    CxrDataset,
    ManifestRow,
    apply_label_fraction,
    class_weights,
    read_manifest,
    select_split,
)
from training.errors import DataError

HEADER = "image,label,patient_id,split,view,source,sha256\n"


def _write_manifest(tmp_path: Path, lines: list[str], header: str = HEADER) -> Path:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(header + "".join(line + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="module")
def cxr3_rows(shared_data: Path) -> list[ManifestRow]:
    """Every row of the shared cxr3 manifest."""
    return read_manifest(shared_data / "cxr3" / "manifest.csv", DEFAULT_LABELS)


@pytest.mark.parametrize("name", ["00000165_001.png", "JPCLN006.IMG.png"])
def test_dataset_equals_service_path_when_augmentation_is_off(
    shared_data: Path, tmp_path: Path, name: str
) -> None:
    """A full-size upload gives the same tensor through training and the service."""
    image = shared_data / "fullsize" / name
    manifest = _write_manifest(tmp_path, [f"{image},nodule,p1,test,PA,JSRT,"])
    rows = read_manifest(manifest, DEFAULT_LABELS)
    service = preprocess(
        decode(image.read_bytes(), "image/png").pixels, PreprocessConfig(size=224)
    )

    sample, label, _ = CxrDataset(rows, DEFAULT_LABELS, input_size=224)[0]

    assert sample.shape == (3, 224, 224)
    assert float(np.abs(sample.numpy() - service).max()) <= 1e-6
    assert label == DEFAULT_LABELS.index("nodule")


def test_augmentation_is_reproducible_and_changes_with_epoch(
    cxr3_rows: list[ManifestRow],
) -> None:
    """The same (seed, epoch, index) gives the same sample; another epoch differs."""
    rows = select_split(cxr3_rows, "train")[:2]
    dataset = CxrDataset(rows, DEFAULT_LABELS, augmentation=Augmentation(), seed=3)

    first = dataset[1][0]
    again = dataset[1][0]
    dataset.set_epoch(1)
    other = dataset[1][0]

    assert np.array_equal(first.numpy(), again.numpy())
    assert not np.array_equal(first.numpy(), other.numpy())


def test_augmentation_never_mirrors_left_and_right() -> None:
    """A bright mark on the left stays on the left under every geometric draw."""
    square = np.zeros((224, 224), dtype=np.float32)
    square[100:124, 30:60] = 1.0  # the mark's centre is at x = 45
    augmentation = Augmentation()

    centres = []
    for seed in range(20):
        moved = augmentation.geometric(square, np.random.default_rng(seed))
        columns = np.nonzero(moved > 0.5)[1]
        centres.append(float(columns.mean()))

    assert max(centres) < 224 / 3
    assert min(centres) > 15
    assert len(set(centres)) > 1


def test_label_fraction_is_stratified_and_seeded(cxr3_rows: list[ManifestRow]) -> None:
    """10 % keeps about a tenth of each class, the same rows for the same seed."""
    train = select_split(cxr3_rows, "train")
    before = Counter(row.label for row in train)

    kept = apply_label_fraction(train, 0.1, seed=7)
    again = apply_label_fraction(train, 0.1, seed=7)
    other = apply_label_fraction(train, 0.1, seed=8)

    after = Counter(row.label for row in kept if row.label)
    for label, count in before.items():
        assert after[label] == int(np.ceil(0.1 * count))
    assert len(kept) == len(train)
    assert [row.label for row in kept] == [row.label for row in again]
    assert [row.label for row in kept] != [row.label for row in other]


def test_unlabelled_row_gets_the_unlabelled_index(
    shared_data: Path, tmp_path: Path
) -> None:
    """An empty label in the manifest becomes label index -1 in the dataset."""
    image = shared_data / "cxr3" / "images" / "JPCLN006.png"
    manifest = _write_manifest(tmp_path, [f"{image},,p1,train,PA,JSRT,"])
    rows = read_manifest(manifest, DEFAULT_LABELS)

    _, label, teacher = CxrDataset(rows, DEFAULT_LABELS)[0]

    assert label == UNLABELLED
    assert teacher.shape == (len(DEFAULT_LABELS),)


def test_class_weights_are_balanced_over_labelled_rows() -> None:
    """Weights are n / (C * n_c): the rare class weighs most, unlabelled ignored."""
    rows = [
        ManifestRow(Path("a"), label, "train")
        for label in ["normal"] * 6 + ["pneumonia"] * 3 + ["nodule"] + [""] * 5
    ]

    weights = class_weights(rows, DEFAULT_LABELS)

    expected = [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)]
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)


def test_select_split_subset_contains_every_class(cxr3_rows: list[ManifestRow]) -> None:
    """A smoke-size subset still holds every label."""
    subset = select_split(cxr3_rows, "train", max_images=6)

    assert len(subset) == 6
    assert {row.label for row in subset} == set(DEFAULT_LABELS)
    assert all(row.split == "train" for row in subset)


def test_read_manifest_rejects_missing_columns(tmp_path: Path) -> None:
    """A manifest without a split column is refused, naming what was expected."""
    manifest = _write_manifest(tmp_path, ["x.png,normal"], header="image,label\n")

    with pytest.raises(DataError, match="split"):
        read_manifest(manifest, DEFAULT_LABELS)


def test_read_manifest_rejects_unknown_label(tmp_path: Path) -> None:
    """A label outside the configured classes is refused."""
    manifest = _write_manifest(tmp_path, ["x.png,fracture,p1,train,PA,NIH,"])

    with pytest.raises(DataError, match="fracture"):
        read_manifest(manifest, DEFAULT_LABELS)


def test_dataset_reports_undecodable_image_as_data_error(tmp_path: Path) -> None:
    """A file that is not an image raises DataError, not a library error."""
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    manifest = _write_manifest(tmp_path, ["broken.png,normal,p1,train,PA,NIH,"])
    rows = read_manifest(manifest, DEFAULT_LABELS)

    with pytest.raises(DataError, match="row 0"):
        CxrDataset(rows, DEFAULT_LABELS)
