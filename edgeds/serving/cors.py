"""CORS for `edgeds serve`: which web pages a browser lets call the server.

Off unless `--cors-origin` names origins (`*`: any). With it on, a preflight (`OPTIONS`) from
an allowed origin is answered without the API key (browsers never send it there), and every
reply to such an origin (errors and event streams included) carries
Access-Control-Allow-Origin. The API key still guards the requests themselves, and bodies
stay JSON only, so a page of an origin not listed cannot even send one without a preflight.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeds.errors import UsageError

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"  # not covered by a "*" when a request carries Authorization
EXPOSE_HEADERS = "Retry-After"  # what a busy server's 503 tells the page
MAX_AGE_S = 600  # how long a browser may reuse a preflight's answer


def check_origin(origin: str) -> str:
    """A --cors-origin value as browsers send it in `Origin` (scheme://host[:port], lower case,
    no trailing slash); UsageError for anything else."""
    value = origin.strip().rstrip("/").lower()
    if value in ("*", "null"):
        return value
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?# "):
        raise UsageError(f"--cors-origin {origin!r}: give an origin like http://localhost:3000 "
                         "(scheme, host and port, no path), or * for any")
    return value


@dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[str, ...] = ()  # checked (check_origin); empty: CORS off

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allowed(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin`; None if not allowed."""
        if not origin or not self.origins:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin.lower() in self.origins else None

    def headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of any reply to a request from `origin`."""
        if not self.enabled:
            return {}
        allowed = self.allowed(origin)
        vary = {"Vary": "Origin"}  # caches must not hand one origin's reply to another
        if allowed is None:
            return vary
        return {**vary, "Access-Control-Allow-Origin": allowed, "Access-Control-Expose-Headers": EXPOSE_HEADERS}

    @staticmethod
    def preflight_headers() -> dict[str, str]:
        return {"Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_S)}
