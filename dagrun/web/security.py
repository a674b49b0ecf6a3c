"""Who may call the service, and cross-site requests.

With a token, every request needs it: ``Authorization: Bearer TOKEN`` (API
clients), or the cookie that ``/login?token=TOKEN`` sets for a browser
(HttpOnly, SameSite=Strict; it holds a value derived from the token, never
the token). With ``allowed_hosts``, a request whose Host header names
another host is refused (a DNS-rebinding page cannot reach the service). A request that changes something and is not
authenticated by the header (the page's own, or any when there is no token)
must carry the ``X-Dagrun-Request`` header, which a cross-site form or
image can never send (and a cross-site script cannot without a CORS
preflight this service never answers), and, when the browser says where it
comes from, come from this origin.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable
from urllib.parse import urlsplit

from flask import abort, redirect, request

COOKIE = "dagrun_token"


class Guard:
    CSRF_HEADER = "X-Dagrun-Request"

    def __init__(self, token: str | None, allowed_hosts: Iterable[str] | None = None) -> None:
        self.token = token or None
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self._session = (hmac.new(self.token.encode(), b"dagrun browser session", hashlib.sha256).hexdigest()
                         if self.token else None)

    def _matches(self, given: str | None) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _session_matches(self, given: str | None) -> bool:
        return given is not None and self._session is not None and hmac.compare_digest(given.encode(),
                                                                                      self._session.encode())

    def check(self) -> None:
        """Before every request of the blueprint."""
        if self.allowed_hosts is not None:
            host = (urlsplit("//" + request.host).hostname or "").lower()
            if host not in self.allowed_hosts:
                abort(421, description=f"this dagrun does not serve the host {host!r}")
        if request.endpoint and request.endpoint.endswith(".login") or request.path.endswith("/api/health"):
            return
        header = request.headers.get("Authorization", "")
        by_header = header.startswith("Bearer ") and self._matches(header[len("Bearer "):].strip())
        if self.token is not None and not (by_header or self._session_matches(request.cookies.get(COOKIE))):
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
        response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", secure=request.is_secure,
                            path=request.script_root or "/")
        return response

    @staticmethod
    def headers(response):  # noqa: ANN001, ANN205 - a Flask after_request hook
        """Pages are never framed (clickjacking of Cancel, Resume, Save) and
        load nothing from elsewhere."""
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                                    "form-action 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response
