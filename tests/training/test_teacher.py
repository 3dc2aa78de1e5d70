"""Tests for the teacher interface, prompt ensembling and the load_teacher factory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.errors import TeacherInputError, TeacherLoadError
from training.prompts import DEFAULT_CLASS_PROMPTS
from training.teacher import Teacher, load_teacher, make_identity, sha256_of_weights

TEXT_VECTORS = {
    "cat": torch.tensor([1.0, 0.0, 0.0]),
    "kitten": torch.tensor([0.0, 2.0, 0.0]),
    "dog": torch.tensor([0.0, 0.0, 3.0]),
}


class FixedTeacher(Teacher):
    """A teacher with hand-set embeddings, so expected logits can be worked out."""

    kind = "fixed"
    input_size = 4
    identity = make_identity("fixed", "0" * 64, 4)
    logit_scale = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.text_calls = 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))  # (N, 3): one value a channel

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.text_calls += 1
        return torch.stack([TEXT_VECTORS[t] for t in texts])


def test_logits_average_normalised_prompt_embeddings() -> None:
    """A class scores the scaled cosine with the renormalised mean of its prompts."""
    teacher = FixedTeacher()
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0], images[0, 1] = 1.0, 1.0  # embedding (1, 1, 0)
    images[1, 2] = 1.0  # embedding (0, 0, 1)

    logits = teacher.logits(images, {"feline": ["cat", "kitten"], "canine": ["dog"]})

    # Normalised feline prompts average to (0.5, 0.5, 0): direction (1, 1, 0).
    feline = F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    image0 = F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    assert logits.shape == (2, 2)
    torch.testing.assert_close(logits[0, 0], 10.0 * image0 @ feline)
    torch.testing.assert_close(logits[0, 1], torch.tensor(0.0))
    torch.testing.assert_close(logits[1], torch.tensor([0.0, 10.0]))


def test_logits_columns_follow_class_order() -> None:
    """Swapping the classes in the prompt dict swaps the logit columns."""
    teacher = FixedTeacher()
    images = torch.rand(3, 3, 4, 4)

    forward = teacher.logits(images, {"a": ["cat"], "b": ["dog"]})
    backward = teacher.logits(images, {"b": ["dog"], "a": ["cat"]})

    torch.testing.assert_close(forward, backward.flip(1))


def test_class_embeddings_are_cached_per_prompt_set() -> None:
    """Text is encoded once per prompt set, not once per image batch."""
    teacher = FixedTeacher()
    prompts = {"a": ["cat"], "b": ["dog"]}

    for _ in range(3):
        teacher.logits(torch.rand(2, 3, 4, 4), prompts)

    assert teacher.text_calls == 2  # one call a class, the first time only


def test_logits_run_without_gradients() -> None:
    """Teachers never build a graph, even for inputs that require grad."""
    teacher = FixedTeacher()
    images = torch.rand(2, 3, 4, 4, requires_grad=True)

    logits = teacher.logits(images, {"a": ["cat"], "b": ["dog"]})

    assert not logits.requires_grad


@pytest.mark.parametrize(
    "shape",
    [(3, 4, 4), (2, 3, 8, 8), (2, 1, 4, 4)],
    ids=["no-batch", "size", "channels"],
)
def test_logits_refuse_images_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    """Images must be (N, 3, S, S) at the teacher's input size."""
    teacher = FixedTeacher()

    with pytest.raises(TeacherInputError, match="expected images"):
        teacher.logits(torch.zeros(shape), {"a": ["cat"], "b": ["dog"]})


@pytest.mark.parametrize(
    "prompts",
    [
        {"a": ["cat"]},
        {"a": "cat", "b": ["dog"]},
        {"a": [], "b": ["dog"]},
        {"a": [""], "b": ["dog"]},
    ],
    ids=["one-class", "bare-string", "empty-list", "empty-prompt"],
)
def test_logits_refuse_malformed_class_prompts(prompts: dict) -> None:
    """Class prompts must be at least two classes of non-empty prompt lists."""
    teacher = FixedTeacher()

    with pytest.raises(TeacherInputError):
        teacher.logits(torch.zeros(1, 3, 4, 4), prompts)


def test_unknown_kind_lists_the_valid_kinds() -> None:
    """An unknown teacher kind names the three that exist."""
    with pytest.raises(TeacherLoadError, match="vlkd, open_clip, hf_clip"):
        load_teacher("biomedclip")


@pytest.mark.parametrize("kind", ["vlkd", "open_clip", "hf_clip"])
def test_unknown_options_are_refused(kind: str, tmp_path: Path) -> None:
    """A misspelt loader option is an error, not silently ignored."""
    with pytest.raises(TeacherLoadError, match="unknown"):
        load_teacher(kind, tmp_path, modelname="ViT-B-32")


def test_vlkd_missing_directory_says_how_to_train(tmp_path: Path) -> None:
    """A missing vlkd teacher points at the training command."""
    with pytest.raises(TeacherLoadError, match=r"training\.teacher_train"):
        load_teacher("vlkd", tmp_path / "absent")


def test_vlkd_directory_without_config_is_refused(tmp_path: Path) -> None:
    """A vlkd folder without config.json names the missing file."""
    (tmp_path / "model.safetensors").write_bytes(b"x")

    with pytest.raises(TeacherLoadError, match=r"config\.json"):
        load_teacher("vlkd", tmp_path)


def test_vlkd_malformed_config_is_refused(tmp_path: Path) -> None:
    """A config.json without a model section is refused with what was expected."""
    (tmp_path / "config.json").write_text('{"epochs": 3}')
    (tmp_path / "model.safetensors").write_bytes(b"x")

    with pytest.raises(TeacherLoadError, match="'model' section"):
        load_teacher("vlkd", tmp_path)


def test_weights_digest_depends_on_content(tmp_path: Path) -> None:
    """Two weight files that differ by one byte have different digests."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "w.safetensors").write_bytes(b"\x00\x01")
    (second / "w.safetensors").write_bytes(b"\x00\x02")

    assert sha256_of_weights(first) != sha256_of_weights(second)


def test_weights_digest_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    """Hashing an empty folder is a load error, not an empty digest."""
    with pytest.raises(TeacherLoadError, match="expected a weights file"):
        sha256_of_weights(tmp_path)


def test_default_prompts_cover_the_three_labels_with_ensembles() -> None:
    """Default prompts are in label order with several phrasings per class."""
    assert list(DEFAULT_CLASS_PROMPTS) == ["normal", "pneumonia", "nodule"]
    assert all(len(prompts) >= 3 for prompts in DEFAULT_CLASS_PROMPTS.values())
