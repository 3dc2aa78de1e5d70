"""Container health probe: exit 0 when the service's ``/healthz`` answers 200.

Runs inside the image (no curl in a slim base); used by the Dockerfile's
HEALTHCHECK and by compose's ``depends_on: condition: service_healthy``.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 3.0


def main() -> int:
    """Probe ``http://127.0.0.1:$VLKD_PORT/healthz``; 0 healthy, 1 not."""
    port = os.environ.get("VLKD_PORT", "8000")
    url = f"http://127.0.0.1:{port}/healthz"

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"healthz unreachable: {type(error).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
