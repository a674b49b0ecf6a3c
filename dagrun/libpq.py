"""What libpq reads unasked in dagrun's own process, which runs as root.

psycopg2-binary brings its own libpq, OpenSSL and Kerberos. That OpenSSL
reads its settings from the folder the wheel was built in
(``/host/tmp/libpq.build/openssl.cnf``): wherever a host's root is mounted
at ``/host`` (a container), any user may write there, and the settings may
load a library. Its Kerberos looks for root's tickets in ``/tmp/krb5cc_0``,
which any user may create. So before dagrun's first connection (the store,
the PostgreSQL actions) OpenSSL is pointed at the system's root-owned
settings and Kerberos keeps its tickets in memory. An operator's own
``OPENSSL_CONF`` or ``KRB5CCNAME`` stays.
"""

from __future__ import annotations

import functools
import os

SYSTEM_OPENSSL_SETTINGS = ("/etc/ssl/openssl.cnf", "/etc/pki/tls/openssl.cnf", "/usr/lib/ssl/openssl.cnf")


@functools.cache
def read_only_root_files() -> None:
    """Once per process, before libpq first connects."""
    for path in (*SYSTEM_OPENSSL_SETTINGS, os.devnull):  # (no settings at all, rather than anyone's)
        try:
            info = os.stat(path)
        except OSError:
            continue
        if info.st_uid == 0 and not info.st_mode & 0o022:
            os.environ.setdefault("OPENSSL_CONF", path)
            break
    os.environ.setdefault("KRB5CCNAME", "MEMORY:")
