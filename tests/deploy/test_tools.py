"""The deployment tests' program lookup: a missing program fails, never skips."""

from __future__ import annotations

import pytest

from tests.deploy.tools import require_program


def test_require_program_fails_with_the_setup_command_when_missing() -> None:
    """An absent program fails the test with a message naming scripts/setup.sh."""
    name = "vlkd-no-such-program-xyz"

    with pytest.raises(pytest.fail.Exception) as failure:
        require_program(name, "nothing")

    assert name in str(failure.value)
    assert "scripts/setup.sh test" in str(failure.value)


def test_require_program_finds_an_installed_program() -> None:
    """A program on PATH is returned as a path."""
    found = require_program("sh", "dash")

    assert found.endswith("/sh")
