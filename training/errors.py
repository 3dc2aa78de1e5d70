"""Errors the training side raises on purpose.

Hierarchy::

    TrainingError               base; never raised directly
    ├── TeacherLoadError        a teacher checkpoint or directory is missing,
    │                           incomplete or not the format its kind expects
    ├── TeacherInputError       images or class prompts handed to a teacher are
    │                           not what the interface expects
    ├── DataError               a manifest or image used for training is unusable
    ├── ConfigError             a training setting is unknown or out of range
    └── SoftLabelError          teacher soft labels cannot be computed or read back

Messages say what was expected and what was received. Errors from libraries
(torch, open_clip, transformers, safetensors) are converted to these types where
they enter vlkd's code.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every training error vlkd raises on purpose."""


class TeacherLoadError(TrainingError):
    """Raised when a teacher cannot be built from the given kind and path."""


class TeacherInputError(TrainingError):
    """Raised when images or class prompts do not match the teacher interface."""


class DataError(TrainingError):
    """Raised when a manifest, a split or an image cannot be used for training."""


class ConfigError(TrainingError):
    """Raised when a training setting is out of range or unknown."""


class SoftLabelError(TrainingError):
    """Raised when teacher soft labels cannot be computed or read back."""
