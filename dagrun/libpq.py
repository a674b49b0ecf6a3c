"""What libpq reads unasked in dagrun's own process, which runs as root.

psycopg2-binary brings its own libpq, OpenSSL and Kerberos. That OpenSSL
reads its settings from the folder the wheel was built in
(``/host/tmp/libpq.build/openssl.cnf``): wherever a host's root is mounted
at ``/host`` (a container), any user may write there, and the settings may
load a library. Its Kerberos looks for root's tickets in ``/tmp/krb5cc_0``,
which any user may create. So before dagrun's first connection (the store,
the PostgreSQL actions) OpenSSL is pointed at the system's root-owned
settings, and at the system's folders of providers and engines (the
wheel's own are in that build folder too, where settings that activate a
provider would load it from), and Kerberos keeps its tickets in memory. An
operator's own ``OPENSSL_CONF``, ``OPENSSL_MODULES``, ``OPENSSL_ENGINES``
or ``KRB5CCNAME`` stays.
"""

from __future__ import annotations

import functools
import os
import sysconfig

SYSTEM_OPENSSL_SETTINGS = ("/etc/ssl/openssl.cnf", "/etc/pki/tls/openssl.cnf", "/usr/lib/ssl/openssl.cnf")
_LIB = [f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}", "/usr/lib64", "/usr/lib"]


@functools.cache
def read_only_root_files() -> None:
    """Once per process, before libpq first connects. Where the system has
    none that only root can change: nothing at all (``/dev/null``), rather
    than anyone's."""
    os.environ.setdefault("OPENSSL_CONF", _root_only(SYSTEM_OPENSSL_SETTINGS))
    os.environ.setdefault("OPENSSL_MODULES", _root_only([f"{lib}/ossl-modules" for lib in _LIB]))
    os.environ.setdefault("OPENSSL_ENGINES", _root_only([f"{lib}/engines-3" for lib in _LIB]))
    os.environ.setdefault("KRB5CCNAME", "MEMORY:")


def _root_only(candidates: list[str] | tuple[str, ...]) -> str:
    for path in candidates:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if info.st_uid == 0 and not info.st_mode & 0o022:
            return path
    return os.devnull
