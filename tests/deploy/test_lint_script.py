"""scripts/lint_deploy.sh, the one command that validates every deployment file."""

from __future__ import annotations

import os
import subprocess

from tests.deploy.tools import REPO_ROOT


def test_lint_deploy_script_passes_on_the_repository() -> None:
    """The script exits 0 and reports every check as passed."""
    script = REPO_ROOT / "scripts" / "lint_deploy.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHANC")}

    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "lint_deploy: all deployment files valid" in output
