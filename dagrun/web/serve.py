"""``dagrun serve``: the service under waitress, a production WSGI server.

Each live event stream holds one of its threads, so there are many
(``threads``); responses are sent as they are written (``send_bytes=1``),
which event streams need. Anything but loopback needs a token.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

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
          **options: Any) -> None:
    if not is_loopback(host) and not token:
        raise InputError(f"serving on {host} (not loopback) needs a token: --token TOKEN or $DAGRUN_TOKEN")
    try:
        import waitress
    except ImportError:
        raise InputError("dagrun serve needs the web extra: pip install 'dagrun[web]'") from None
    from . import create_app
    app = create_app(token=token, **options)
    log.warning("dagrun serving on http://%s:%d/%s", host, port, " (token required)" if token else "")
    waitress.serve(app, host=host, port=port, threads=threads, send_bytes=1, ident="dagrun",
                   clear_untrusted_proxy_headers=True, channel_timeout=3600)


def token_from_environment() -> str | None:
    return os.environ.get("DAGRUN_TOKEN") or None
