"""Tests for the training configuration (training/config.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from training.config import TrainConfig, add_arguments, from_arguments
from training.errors import ConfigError


def _parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(argv))


def test_flags_default_to_the_dataclass_defaults() -> None:
    """With no flags the command line gives exactly the default config."""
    config = _parse([])

    assert config == TrainConfig()


def test_flags_override_fields_of_every_kind() -> None:
    """Float, int, bool, string and tuple flags all reach the config."""
    config = _parse(
        [
            "--alpha",
            "0.5",
            "--epochs",
            "3",
            "--no-augment",
            "--arch",
            "resnet50",
            "--labels",
            "a",
            "b",
        ]
    )

    assert config.alpha == 0.5
    assert config.epochs == 3
    assert config.augment is False
    assert config.arch == "resnet50"
    assert config.labels == ("a", "b")


@pytest.mark.parametrize(
    ("field", "value"),
    [("alpha", 1.5), ("temperature", 0.0), ("label_fraction", 0.0), ("epochs", 0)],
)
def test_config_refuses_out_of_range_values(field: str, value: float) -> None:
    """An impossible setting raises ConfigError naming the field and the value."""
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    """save() then load() gives back an equal config."""
    config = TrainConfig(alpha=0.3, labels=("x", "y", "z"), out_dir="somewhere")

    config.save(tmp_path / "config.json")
    loaded = TrainConfig.load(tmp_path / "config.json")

    assert loaded == config


def test_from_dict_refuses_unknown_keys() -> None:
    """A misspelt key is an error, not silently ignored."""
    with pytest.raises(ConfigError, match="alpah"):
        TrainConfig.from_dict({"alpah": 0.5})
