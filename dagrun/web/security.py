"""Who may call the service, and cross-site requests.

With a token, every request needs it: ``Authorization: Bearer TOKEN`` (API
clients), or the cookie that ``/login?token=TOKEN`` sets for a browser
(HttpOnly, SameSite=Strict). A request that changes something and is not
authenticated by the header (the page's own, or any when there is no token)
must carry the ``X-Dagrun-Request`` header, which a cross-site form or
image can never send (and a cross-site script cannot without a CORS
preflight this service never answers), and, when the browser says where it
comes from, come from this origin.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from flask import abort, redirect, request

COOKIE = "dagrun_token"


class Guard:
    CSRF_HEADER = "X-Dagrun-Request"

    def __init__(self, token: str | None) -> None:
        self.token = token or None

    def _matches(self, given: str | None) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self) -> None:
        """Before every request of the blueprint."""
        if request.endpoint and request.endpoint.endswith(".login") or request.path.endswith("/api/health"):
            return
        header = request.headers.get("Authorization", "")
        by_header = header.startswith("Bearer ") and self._matches(header[len("Bearer "):].strip())
        if self.token is not None and not (by_header or self._matches(request.cookies.get(COOKIE))):
            abort(401, description="this dagrun needs its token: Authorization: Bearer TOKEN "
                                   "(a browser: open /login?token=TOKEN once)")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not by_header:
            if request.headers.get(self.CSRF_HEADER) != "1":
                abort(403, description=f"a request that changes something needs the {self.CSRF_HEADER} header")
            origin = request.headers.get("Origin")
            if origin and urlsplit(origin).netloc != request.host:
                abort(403, description="a cross-site request")
            if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
                abort(403, description="a cross-site request")

    def login(self):  # noqa: ANN201 - a Flask view
        """``/login?token=TOKEN``: remember the token in a cookie, go to the runs."""
        if self.token is None:
            return redirect(request.script_root + "/")
        if not self._matches(request.args.get("token")):
            abort(401, description="wrong or missing token")
        response = redirect(request.script_root + "/")
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", secure=request.is_secure)
        return response
