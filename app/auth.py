"""Optional API keys for ``/v1/*``; the probes and ``/metrics`` stay open.

When ``VLKD_API_KEYS`` is set, a request must carry one of the keys in
``X-API-Key`` or ``Authorization: Bearer <key>``; otherwise 401. Keys are compared
in constant time, against every configured key, so timing reveals nothing.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import HTTPException, Request, status

logger = logging.getLogger(__name__)


def presented_key(request: Request) -> str | None:
    """The key the client sent, from ``X-API-Key`` or a Bearer token."""
    key = request.headers.get("x-api-key")
    if key:
        return key

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()

    return None


def key_matches(presented: str, keys: list[str]) -> bool:
    """True when ``presented`` equals one of ``keys``; constant time per key."""
    given = presented.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode("utf-8"))

    return matched


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless keys are off or a valid key is presented."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return

    presented = presented_key(request)
    if presented is None or not key_matches(presented, keys):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid API key is required (X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )
