"""Masking secrets at the edge of a run.

The run state keeps real values (a downstream step reading
``{{ steps.b.result.token }}`` gets the token); everything that leaves the
run — events, results, records, logs, CLI output, the journal — gets a
masked copy made here. A secret is a value of a config field the action's
schema marks ``x-secret`` (or ``writeOnly``), or a variable passed as a
secret. It is masked wherever it appears as text, in its plain form and in
the forms a script is likely to print it in: JSON-escaped, URL-encoded and
base64 (at each of the three byte alignments, so a secret inside a longer
base64 blob such as ``user:password`` is caught too).

Secrets shorter than :data:`MIN_LENGTH` characters are masked only as whole
field values: masking every "ab" in a log would destroy it and protect
nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shlex
import threading
import urllib.parse
from typing import Any, Iterable, Mapping

from ..compile.shell_text import ShellScript
from ..spec import MASK, FrozenDict, Plan
from .outcome import Outcome

MIN_LENGTH = 3
# Where long output was cut (run.shell keeps a head and a tail; util.bounded too).
_CUT = re.compile(r"\n\.\.\. \[\d+ (?:bytes dropped|characters truncated)\] \.\.\.\n")


def variants(secret: str) -> set[str]:
    """The forms of ``secret`` that output may show."""
    found = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""),
             urllib.parse.quote_plus(secret), urllib.parse.quote(secret),
             # as a shell word (a script or command line shown in a record or an error): a ' in it
             # splits the secret around '"'"'
             shlex.quote(secret), shlex.quote(secret).strip("'"),
             # and as bash shows it: set -x ('\'' for a '), printf %q (a backslash before each special)
             secret.replace("'", "'\\''"), re.sub(r"([^A-Za-z0-9_@%+=:,./-])", r"\\\1", secret),
             _ansi_c(secret),
             # as Python prints it inside a repr (a handler's object, bytes)
             repr(secret)[1:-1], repr(secret.encode("utf-8", "surrogateescape"))[2:-1]}
    raw = secret.encode("utf-8", "surrogateescape")
    for offset in range(3):  # the secret preceded by 0, 1 or 2 unknown bytes
        data = b"\0" * offset + raw
        encoded = base64.b64encode(data).decode()
        start = 0 if offset == 0 else 4  # the first group mixes unknown bytes with the secret's
        complete = (len(data) // 3) * 4  # a trailing partial group depends on what follows
        for text in (encoded, encoded.rstrip("=")) if offset == 0 else (encoded[start:complete],):
            if len(text) >= 6:
                found.add(text)
                found.add(text.replace("+", "-").replace("/", "_"))
    return {v for v in found if len(v) >= MIN_LENGTH}


def _ansi_c(secret: str) -> str:
    """Inside bash's $'...' (printf %q and declare -p of text with a newline
    or another control character)."""
    named = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b",
             "\f": "\\f", "\v": "\\v", "\x1b": "\\E"}
    return "".join(named.get(c) or (f"\\{ord(c):03o}" if ord(c) < 32 or ord(c) == 127 else c) for c in secret)


class Redactor:
    """Knows the run's secrets and masks them in copies of what it is given.
    ``add`` may be called from the loop thread while observers read."""

    def __init__(self, secrets: Iterable[Any] = ()):
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._forms: tuple[str, ...] = ()
        self.active = False  # any secret known (read once per attempt: an attribute, not a call)
        for secret in secrets:
            self.add(secret)

    def __bool__(self) -> bool:
        return self.active

    def add(self, secret: Any) -> None:
        if secret is None or isinstance(secret, bool):
            return
        if isinstance(secret, Mapping) or isinstance(secret, (list, tuple)):  # {user, password}: each part too
            for item in (secret.values() if isinstance(secret, Mapping) else secret):
                self.add(item)
        text = secret if isinstance(secret, str) else str(secret)
        if len(text) < MIN_LENGTH or text in self._known:
            return
        with self._lock:
            self._known.add(text)
            forms = set().union(*(variants(s) for s in self._known))
            alternatives = sorted(forms, key=len, reverse=True)  # longest first: no partial masks
            self._forms = tuple(alternatives)
            self._pattern = re.compile("|".join(re.escape(f) for f in alternatives))
            self.active = True

    def text(self, value: str | None) -> str | None:
        pattern = self._pattern
        if pattern is None or not value:
            return value
        masked = pattern.sub(MASK, value)
        return self._cut_edges(masked) if "] ...\n" in masked else masked

    def _cut_edges(self, text: str) -> str:
        """Long output keeps its head and tail: a secret the cut went through
        leaves a part at the end of the head and a part at the start of the
        tail. As many characters as such a part could hold are masked on
        both sides of each cut, whatever they are: masked only where they
        matched a secret's beginning or end, a value holding a cut's text
        would tell, guess by guess, how a secret begins (helper-66)."""
        marks = list(_CUT.finditer(text))
        longest = max((len(form) for form in self._forms), default=0) - 1  # (a part is shorter than its form)
        if not marks or longest < MIN_LENGTH:
            return text
        pieces = [text[a.end() if a else 0:b.start() if b else len(text)]
                  for a, b in zip([None, *marks], [*marks, None])]
        for i, piece in enumerate(pieces):
            if i < len(marks) and piece:  # ends where the cut begins
                piece = piece[:max(0, len(piece) - longest)] + MASK
            if i > 0 and piece:  # begins where the cut ends
                piece = MASK + piece[longest:]
            pieces[i] = piece
        return "".join(p + (marks[i].group() if i < len(marks) else "") for i, p in enumerate(pieces))

    def holds(self, value: Any) -> bool:
        """Does a JSON-like ``value`` hold a secret's value (or one of its
        forms), as text anywhere in it? (Not masked edges: see _cut_edges.)"""
        pattern = self._pattern
        if pattern is None:
            return False
        if isinstance(value, str):
            return bool(pattern.search(value))
        if isinstance(value, Mapping):
            return any(self.holds(k) or self.holds(v) for k, v in value.items())
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(self.holds(v) for v in value)
        return value is not None and not isinstance(value, bool) and bool(pattern.search(str(value)))

    def value(self, value: Any) -> Any:
        """A masked copy of a JSON-like structure (keys are masked too)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(k) if isinstance(k, str) else self._other(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):  # (a set leaves as the list JSON makes of it)
            return [self.value(v) for v in value]
        if isinstance(value, ShellScript):  # shown as its display, which holds the values
            return self.text(str(value))
        return self._other(value)

    def _other(self, value: Any) -> Any:
        """What a Python handler may put in its result besides JSON's
        strings and containers: a number as it is unless its text is a
        secret's; anything else (bytes, a tuple key, an object) leaves as its
        text, masked (the recorder stores that text anyway)."""
        if value is None or isinstance(value, bool):
            return value
        try:
            if isinstance(value, (bytes, bytearray, memoryview)):
                text = bytes(value).decode("utf-8", "replace")
            else:
                text = str(value)
            shown = repr(value)
        except Exception:  # noqa: BLE001 - an object whose str() fails (or an int too long) shows as its type
            return f"({type(value).__name__})"
        masked = self.text(text)
        if isinstance(value, (int, float)):
            return value if masked == text else masked
        return masked if masked != text or self.text(shown) == shown else self.text(shown)

    def config(self, config: Mapping[str, Any] | None, secret_fields: frozenset[str]) -> dict[str, Any] | None:
        """Secret fields replaced whole; other fields masked where a secret shows."""
        if config is None:
            return None
        return {k: (MASK if k in secret_fields and v not in (None, "") else self.value(v)) for k, v in config.items()}

    def learn(self, config: Mapping[str, Any] | None, secret_fields: frozenset[str]) -> None:
        """Add the values of a step's secret fields (as rendered) to the secrets."""
        for key in secret_fields:
            value = (config or {}).get(key)
            if isinstance(value, str):
                self.add(value)

    def plan(self, plan: Plan) -> Plan:
        """The plan observers see: secret config values written in the
        template and secret variables are masked (the run keeps the real plan)."""
        masked = {sid: dataclasses.replace(step, config=FrozenDict(self.config(step.config, step.secret_fields)))
                  for sid, step in plan.steps.items()
                  if step.secret_fields and any(step.config.get(k) not in (None, "") for k in step.secret_fields)}
        if not masked and self._pattern is None:
            return plan
        return dataclasses.replace(plan, steps=FrozenDict({**plan.steps, **masked}),
                                   snapshot=FrozenDict(self.value(dict(plan.snapshot))),
                                   variables=FrozenDict(self.value(dict(plan.variables))))

    def masked_fields(self, mapping: Mapping[str, Any]) -> list[str]:
        """The keys of ``mapping`` whose whole value is a secret."""
        return [k for k, v in mapping.items() if isinstance(v, str) and v in self._known]

    def outcome(self, outcome: Outcome, secret_fields: frozenset[str] = frozenset()) -> Outcome:
        """A masked copy of ``outcome`` (the same object when nothing is secret)."""
        if self._pattern is None and not secret_fields:
            return outcome
        return dataclasses.replace(
            outcome, config=self.config(outcome.config, secret_fields), stdout=self.text(outcome.stdout) or "",
            stderr=self.text(outcome.stderr) or "", error=self.text(outcome.error),
            skip_reason=self.text(outcome.skip_reason), data=self.value(outcome.data))
