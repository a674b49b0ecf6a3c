"""Digests of what a run does not store and a resume is given again: the
secrets written in a template (``step.field`` x-secret values, which go back
into the template as the author's text: compiled, read as a URL or as shell
code by their field), and the variables, variable defaults and workspace
fields a secret field reads. The digest tells whether the value given is
the one the run started with: any other value would let whoever resumes
rewrite what the author wrote, or change the run's inputs half-way (a host
read by a secret URL and by a deploy script). Secrets given as ones may
differ (api.GIVEN_AS_SECRET).

scrypt, with a salt of its own per value: a store read by someone else
does not give the secrets away cheaply, even short ones.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

_N, _R, _P = 2 ** 14, 8, 1  # about 40 ms per value: paid once per secret written in a template, per run


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _derive(value: Any, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(_canonical(value), salt=salt, n=n, r=r, p=p, dklen=32)


def digest(value: Any) -> str:
    salt = os.urandom(16)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${_derive(value, salt, _N, _R, _P).hex()}"


def matches(value: Any, stored: str) -> bool:
    try:
        kind, n, r, p, salt, expected = stored.split("$")
        if kind != "scrypt" or int(n) > 2 ** 20 or int(r) > 16 or int(p) > 4:  # a stored row cannot make us spin
            return False
        return hmac.compare_digest(_derive(value, bytes.fromhex(salt), int(n), int(r), int(p)).hex(), expected)
    except (ValueError, TypeError):
        return False
