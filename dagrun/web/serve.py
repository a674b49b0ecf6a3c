"""``dagrun serve``: the service under waitress, a production WSGI server.

Each live event stream holds one of its threads, so there are many
(``threads``); responses are sent as they are written (``send_bytes=1``),
which event streams need.

There is always a token: loopback is not a trust boundary (every local
user, and every workspace's own processes, can reach 127.0.0.1), so
without one given, a random one is made and the login address printed
once. Anything but loopback needs a token given on purpose. The service
answers only to the host names it was started for (a DNS-rebinding page
names another).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError

log = logging.getLogger("dagrun.web")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(*, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, threads: int = 64,
          allowed_hosts: Iterable[str] = (), **options: Any) -> None:
    if not 0 <= port <= 65535:  # (the socket layer would take 70000 as 4464)
        raise InputError(f"--port must be 0-65535, not {port}")
    if not is_loopback(host) and not token:
        raise InputError(f"serving on {host} (not loopback) needs a token: $DAGRUN_TOKEN or --token-file FILE")
    try:
        import waitress

        from . import create_app  # (Flask)
    except ImportError:
        raise InputError("dagrun serve needs the web extra: pip install 'dagrun[web]'") from None
    from .. import api
    # Before listening: a wrong --db or --actions stops the start with one clear error, and the
    # first requests do not wait for the store's set-up and the run path's imports.
    api.warm_up(database_url=options.get("database_url"), actions=options.get("actions"),
                trusted_actions=options.get("trusted_actions"))
    made = token is None
    if token is not None and len(token) < MIN_TOKEN_CHARS:  # a few characters can be guessed over the network
        raise InputError(f"the token must be at least {MIN_TOKEN_CHARS} characters (this one has {len(token)}): "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe(24))' makes one")
    token = token or secrets.token_urlsafe(24)
    names = {"localhost", "127.0.0.1", "::1", host.lower(), *(h.lower() for h in allowed_hosts)}
    app = create_app(token=token, allowed_hosts=names, max_streams=max(1, threads // 2), **options)
    app.url_map.update()  # the routes' matcher, which werkzeug builds at the first request (50 ms)
    shown = f"[{host}]" if ":" in host else host
    from .blueprint import MAX_BODY_BYTES
    try:
        server = waitress.create_server(app, host=host, port=port, threads=threads, send_bytes=1, ident="dagrun",
                                        # An idle connection is closed after a minute (a stream writes every
                                        # 15 s): a hundred silent ones held every slot for an hour.
                                        clear_untrusted_proxy_headers=True, channel_timeout=60, connection_limit=1000,
                                        max_request_body_size=MAX_BODY_BYTES)  # (waitress would buffer 1 GB)
    except (OSError, ValueError) as exc:  # the port is taken, the address is not this machine's or no address
        raise InputError(f"cannot listen on {shown}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    if made:  # printed once, to whoever started the service (not logged to a file)
        print(f"dagrun serving on http://{shown}:{port}/ - open http://{shown}:{port}/login?token={token} "
              "(a token made for this start; give one with $DAGRUN_TOKEN or --token-file)", file=sys.stderr,
              flush=True)
    else:
        log.warning("dagrun serving on http://%s:%d/ (token required)", shown, port)
    try:
        server.run()
    finally:
        server.close()


MIN_TOKEN_CHARS = 16


def token_from_environment() -> str | None:
    return os.environ.get("DAGRUN_TOKEN") or None


def token_from_file(path: str) -> str:
    """A token kept in a file (not on the command line, where every user
    sees it in ps)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise InputError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not token:
        raise InputError(f"the token file {path} is empty")
    return token
