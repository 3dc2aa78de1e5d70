"""Read the deployment files the way the tests compare them (no Docker needed)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.tools import REPO_ROOT

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
REQUIREMENTS = REPO_ROOT / "docker" / "requirements-serve.txt"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[-1]
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            return None

        return value if isinstance(value, list) else None


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction of a Dockerfile, in order (comments dropped)."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))

    return result


def env_values(path: Path = DOCKERFILE) -> dict[str, str]:
    """The variables the final image's ``ENV`` instructions set."""
    values: dict[str, str] = {}
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            values = {}
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.arguments):
                name, _, value = item.partition("=")
                values[name] = value

    return values


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip("/")
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1

    return re.compile(out + r"\Z")


def dockerignore_admits(relative: str, path: Path = DOCKERIGNORE) -> bool:
    """True when Docker would send ``relative`` in the build context.

    Docker's rule: a path is excluded when the last pattern matching it or one
    of its parent folders is a plain pattern, kept when it is a ``!`` one.
    """
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    admitted = True
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _dockerignore_regex(line.lstrip("!"))
        if any(regex.match(candidate) for candidate in candidates):
            admitted = negate

    return admitted


def pinned_requirements(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``name -> version`` of a requirements file; raises on an unpinned line."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        if not separator or not version:
            raise ValueError(f"requirement not pinned with ==: {line!r}")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version

    return pins
