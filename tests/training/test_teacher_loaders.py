"""Tests for the open_clip and transformers CLIP teacher loaders (offline, tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.errors import TeacherLoadError
from training.prompts import DEFAULT_CLASS_PROMPTS
from training.teacher import load_teacher

SIZE = 32

OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": SIZE,
        "layers": 1,
        "width": 32,
        "patch_size": 8,
        "head_width": 16,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 1,
    },
}
WORDS = ["a", "chest", "x", "ray", "showing", "signs", "of", "pneumonia", "with"]
WORDS += ["pulmonary", "nodule", "normal", "lung", "radiograph", "clear", "no"]


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny open_clip model saved as config + safetensors."""
    import open_clip
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("open_clip")
    config = {
        "model_cfg": OPEN_CLIP_CFG,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
    save_file(model.state_dict(), str(directory / "open_clip_model.safetensors"))

    return directory


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny transformers CLIP with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]"
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "eos_token_id": 3,
            "bos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "image_size": SIZE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("hf_clip")
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)

    return directory


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_logits_shape_matches_batch_and_classes_for_local_clip(
    kind: str, open_clip_dir: Path, hf_clip_dir: Path
) -> None:
    """A tiny local CLIP of either kind scores N images against C classes."""
    path = open_clip_dir if kind == "open_clip" else hf_clip_dir
    teacher = load_teacher(kind, path)
    images = torch.randn(5, 3, SIZE, SIZE)

    logits = teacher.logits(images, DEFAULT_CLASS_PROMPTS)

    assert logits.shape == (5, len(DEFAULT_CLASS_PROMPTS))
    assert torch.isfinite(logits).all()
    assert teacher.input_size == SIZE
    assert teacher.identity.startswith(f"{kind}:sha256=")


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_loaded_teacher_is_frozen_and_in_eval_mode(
    kind: str, open_clip_dir: Path, hf_clip_dir: Path
) -> None:
    """Loaders return models that never train during distillation."""
    path = open_clip_dir if kind == "open_clip" else hf_clip_dir

    teacher = load_teacher(kind, path)

    model = teacher.model  # type: ignore[attr-defined]
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_open_clip_checkpoint_file_matches_directory(open_clip_dir: Path) -> None:
    """A checkpoint file with its config beside it loads as the folder does."""
    images = torch.randn(2, 3, SIZE, SIZE)
    from_dir = load_teacher("open_clip", open_clip_dir)

    from_file = load_teacher("open_clip", open_clip_dir / "open_clip_model.safetensors")

    assert from_file.identity == from_dir.identity
    torch.testing.assert_close(
        from_file.logits(images, DEFAULT_CLASS_PROMPTS),
        from_dir.logits(images, DEFAULT_CLASS_PROMPTS),
    )


def test_open_clip_uses_its_own_normalisation(open_clip_dir: Path) -> None:
    """The open_clip teacher reads its mean / std and converts ImageNet input."""
    teacher = load_teacher("open_clip", open_clip_dir)
    images = torch.zeros(1, 3, SIZE, SIZE)  # ImageNet-normalised: the ImageNet mean

    converted = teacher._renormalise(images)

    assert teacher.model_mean == (0.5, 0.5, 0.5)
    expected = (torch.tensor([0.485, 0.456, 0.406]) - 0.5) / 0.25
    torch.testing.assert_close(converted[0, :, 0, 0], expected)


def test_identity_changes_when_weights_change(
    open_clip_dir: Path, tmp_path: Path
) -> None:
    """Different weights give a different identity, so soft-label caches never mix."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(open_clip_dir / "open_clip_model.safetensors"))
    state["logit_scale"] = state["logit_scale"] + 1.0
    (tmp_path / "open_clip_config.json").write_text(
        (open_clip_dir / "open_clip_config.json").read_text()
    )
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))

    changed = load_teacher("open_clip", tmp_path)

    assert changed.identity != load_teacher("open_clip", open_clip_dir).identity


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_missing_path_names_what_was_expected(kind: str, tmp_path: Path) -> None:
    """A path that does not exist fails with a TeacherLoadError saying what to give."""
    missing = tmp_path / "nowhere"

    with pytest.raises(TeacherLoadError, match=r"not found.*expected"):
        load_teacher(kind, missing)


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_path_is_required_for_local_clip_kinds(kind: str) -> None:
    """open_clip and hf_clip have no default path and say so."""
    with pytest.raises(TeacherLoadError, match="needs a path"):
        load_teacher(kind)


def test_open_clip_dir_without_config_is_refused(tmp_path: Path) -> None:
    """A folder of weights without open_clip_config.json names the missing file."""
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"not really weights")

    with pytest.raises(TeacherLoadError, match=r"open_clip_config\.json"):
        load_teacher("open_clip", tmp_path)


def test_open_clip_dir_without_weights_is_refused(
    open_clip_dir: Path, tmp_path: Path
) -> None:
    """A config alone would give a random model: refuse it instead."""
    (tmp_path / "open_clip_config.json").write_text(
        (open_clip_dir / "open_clip_config.json").read_text()
    )

    with pytest.raises(TeacherLoadError, match="no weights file"):
        load_teacher("open_clip", tmp_path)


def test_open_clip_malformed_weights_are_refused(
    open_clip_dir: Path, tmp_path: Path
) -> None:
    """Corrupt weights become a TeacherLoadError, not a library traceback."""
    (tmp_path / "open_clip_config.json").write_text(
        (open_clip_dir / "open_clip_config.json").read_text()
    )
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"\x00" * 64)

    with pytest.raises(TeacherLoadError, match="could not build the open_clip teacher"):
        load_teacher("open_clip", tmp_path)


def test_open_clip_malformed_config_is_refused(
    open_clip_dir: Path, tmp_path: Path
) -> None:
    """An open_clip_config.json that is not JSON is reported as such."""
    (tmp_path / "open_clip_config.json").write_text("{ not json")
    (tmp_path / "open_clip_model.safetensors").write_bytes(
        (open_clip_dir / "open_clip_model.safetensors").read_bytes()
    )

    with pytest.raises(TeacherLoadError, match="open_clip"):
        load_teacher("open_clip", tmp_path)


def test_hf_clip_dir_without_config_is_refused(tmp_path: Path) -> None:
    """A transformers folder without config.json names the missing file."""
    (tmp_path / "model.safetensors").write_bytes(b"x")

    with pytest.raises(TeacherLoadError, match=r"config\.json"):
        load_teacher("hf_clip", tmp_path)


def test_hf_clip_malformed_weights_are_refused(
    hf_clip_dir: Path, tmp_path: Path
) -> None:
    """Corrupt transformers weights become a TeacherLoadError."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((hf_clip_dir / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)

    with pytest.raises(TeacherLoadError, match="could not build the hf_clip teacher"):
        load_teacher("hf_clip", tmp_path)
