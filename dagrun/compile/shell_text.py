"""Values in shell scripts: always data, never code, in any quoting context.

A shell script written by a template's author may contain ``{{ expr }}``.
The value of ``expr`` (a workspace field typed into a web form, a variable,
an upstream result) must reach the script byte for byte and never be parsed
by bash. So a value never enters the script text at all:

1. the template is rendered with each ``{{ }}`` result replaced by a marker
   (``\\x01N\\x02``) and the value kept aside (:func:`render_shell`);
2. :func:`analyse` reads the rendered text the way bash will and finds the
   quoting context of every marker;
3. each marker becomes a reference to an environment variable holding the
   value: ``"${DAGRUN_VALUE_N}"`` in a bare word (one word, no splitting, no
   globbing), ``${DAGRUN_VALUE_N}`` inside double quotes or an unquoted
   here-document body. Bash expands a variable's content exactly once and
   never parses it, so ``;``, ``$( )``, backticks, quotes and newlines in a
   value are just characters.

Contexts where bash *would* parse an expanded value, or where a reference
cannot be expanded, are refused with the line: inside single quotes or
``$'...'`` (nothing expands there; and ``bash -c '...'`` or ``python -c '...'``
would run the value), a quoted here-document, backticks, ``${...}`` (array
subscripts are arithmetic), arithmetic ``$(( ))`` / ``(( ))`` / ``let`` and
the arithmetic operators of ``[[ ]]`` (bash evaluates ``a[$(cmd)]`` there),
``eval``, after a backslash, and as a here-document delimiter.

A value that starts a word and begins with ``-`` would be read as an option
by the command: it is refused at run time (:class:`ShellValueError`) unless
the word follows a ``--`` argument.

The compiler runs :func:`analyse` on the template source (``{% %}`` blocks
removed) so that an unsafe context is a compile error naming the line; the
run-time render analyses again what control flow actually produced.
"""

from __future__ import annotations

import contextvars
import json

from jinja2 import Undefined, pass_context
import re
from dataclasses import dataclass
from typing import Any, Mapping

OPEN, CLOSE = "\x01", "\x02"
VALUE_PREFIX = "DAGRUN_VALUE_"
MAX_VALUE_BYTES = 128 * 1024  # Linux refuses a larger single environment string (MAX_ARG_STRLEN)
_MARKER = MARKER = re.compile("\x01(\\d+)\x02")
_WORD_REFERENCE = re.compile(r'"\$\{(' + VALUE_PREFIX + r'\d+)\}"')
_REFERENCE = re.compile(r'\$\{(' + VALUE_PREFIX + r'\d+)\}')
_STATEMENT = re.compile(r"\{%-?.*?-?%\}|\{#.*?#\}", re.S)
_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.S)
_ARITH_OPS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
# Builtins that run an argument as code, or take variable *names* (bash
# evaluates a name's subscript as arithmetic: read 'a[$(cmd)]' runs cmd).
_CODE_BUILTINS = frozenset({"eval", "let", "trap", "source", ".", "alias"})
_NAME_BUILTINS = frozenset({"read", "mapfile", "readarray", "unset", "getopts", "wait"})
_DECLARE_BUILTINS = frozenset({"declare", "typeset", "local", "export", "readonly"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")
_CONTROL = frozenset({"then", "do", "else", "elif", "if", "while", "until", "time", "!", "{", "}"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")


class UnsafeContext(ValueError):
    """A ``{{ }}`` stands where bash would parse its value or cannot expand it."""

    def __init__(self, line: int, reason: str):
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: a {{{{ }}}} value cannot be used {reason}")


class ShellValueError(ValueError):
    """A value would change the meaning of the script (an option, a NUL...)."""


@dataclass(frozen=True, slots=True)
class Slot:
    index: int
    quoted: bool  # inside "..." or a here-document body: ${V}; else a bare word: "${V}"
    word_start: bool  # the value begins a word (a leading '-' makes it an option)
    line: int


@dataclass(frozen=True, slots=True)
class ShellScript:
    """Script text that references its values as environment variables.
    ``str()`` is a display for people (records, output): each reference shown
    with its value, shell-quoted. What runs is ``text``, with ``values`` in
    the environment."""

    text: str
    values: Mapping[str, str]

    def __str__(self) -> str:
        import shlex
        text = _WORD_REFERENCE.sub(lambda m: shlex.quote(self.values.get(m.group(1), "")), self.text)
        return _REFERENCE.sub(lambda m: self.values.get(m.group(1), ""), text)


class _Lexer:
    """Just enough of bash's grammar to know the quoting context of a marker.

    A stack of contexts: ``cmd`` (commands: top level, ``$( )``, subshells),
    ``dq`` (double quotes), ``sq`` / ``ansi`` (single quotes, ``$'...'``),
    ``param`` (``${ }``), ``arith`` (``$(( ))``, ``(( ))``, ``$[ ]``),
    ``bt`` (backticks), ``heredoc`` (a body being read).
    """

    def __init__(self, text: str):
        self.text = text
        self.i = 0
        self.line = 1
        self.slots: list[Slot] = []
        self.stack: list[dict[str, Any]] = [self._new_cmd()]
        self.pending_heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, quoted, strip tabs)
        self.integer_names: set[str] = set()  # declared -i or -n: assigning to them is arithmetic

    @staticmethod
    def _new_cmd(closer: str | None = None) -> dict[str, Any]:
        return {"kind": "cmd", "closer": closer, "depth": 0, "case": 0, "word": "", "word_marker": False,
                "words": [], "marker_words": set(), "command_start": True, "command": None,
                "dashdash": False, "cond": False, "integer_declare": False, "redirect": False}

    def fail(self, reason: str) -> None:
        raise UnsafeContext(self.line, reason)

    def run(self) -> list[Slot]:
        while self.i < len(self.text):
            top = self.stack[-1]
            getattr(self, "_" + top["kind"])(top)
        return self.slots

    # -- helpers --------------------------------------------------------------

    def _advance(self, n: int = 1) -> str:
        chunk = self.text[self.i:self.i + n]
        self.line += chunk.count("\n")
        self.i += n
        return chunk

    def _marker(self) -> int | None:
        m = _MARKER.match(self.text, self.i)
        if m is None:
            return None
        self.i = m.end()
        return int(m.group(1))

    def _cmd_ctx(self) -> dict[str, Any]:
        for ctx in reversed(self.stack):
            if ctx["kind"] == "cmd":
                return ctx
        raise AssertionError("no command context")

    def _end_word(self, ctx: dict[str, Any]) -> None:
        word = ctx["word"]
        if not word and not ctx["word_marker"]:
            return
        if ctx["redirect"]:  # a redirection's target is not an argument of the command
            ctx.update(word="", word_marker=False, redirect=False)
            return
        index = len(ctx["words"])
        ctx["words"].append(word)
        if ctx["word_marker"]:
            ctx["marker_words"].add(index)
        if ctx["command_start"]:
            if ctx["word_marker"] or not _NAME.match(word):
                ctx["command_start"] = False
                ctx["command"] = None if ctx["word_marker"] else word
                if word == "[[":
                    ctx["cond"] = True
        elif word == "--":
            ctx["dashdash"] = True
        elif ctx["command"] in _DECLARE_BUILTINS and word.startswith("-") and set(word[1:]) & {"i", "n"}:
            ctx["integer_declare"] = True
        elif ctx["integer_declare"]:
            self.integer_names.add(word.split("=", 1)[0].rstrip("+"))
        if word == "case" and ctx["command"] == "case" and len(ctx["words"]) == 1:
            ctx["case"] += 1  # its patterns end with ')' that must not close a $( )
        elif word == "esac" and ctx["case"]:
            ctx["case"] -= 1
        if ctx["cond"]:
            self._check_condition(ctx)
            if word == "]]":
                ctx["cond"] = False
        if word in _CONTROL:
            ctx["command_start"] = True
        ctx["word"] = ""
        ctx["word_marker"] = False

    def _check_use(self, cmd: dict[str, Any], word: str) -> None:
        """Refuse a value where the command would run it or read it as a name
        (``word``: the part of the current word before the value)."""
        if cmd["redirect"]:
            return
        command = cmd["command"]
        previous = cmd["words"][-1] if cmd["words"] and not word else None
        assignment = _ASSIGNMENT.match(word)
        if command in ("command", "builtin") and len(cmd["words"]) >= 2:
            command = cmd["words"][1]
        if command in _CODE_BUILTINS:
            self.fail(f"in the arguments of {command} (it runs them as code)")
        if command in _NAME_BUILTINS:
            self.fail(f"in the arguments of {command} (they are variable names, whose subscripts bash evaluates)")
        if command == "printf" and previous == "-v" or command in ("[", "test", "[[") and previous in ("-v", "-R"):
            self.fail(f"as the variable name after {previous}")
        if command in _DECLARE_BUILTINS:
            if not assignment:
                self.fail(f"as a variable name in {command}")
            if cmd["integer_declare"]:
                self.fail(f"as the value of an integer or nameref variable ({command} -i / -n)")
        if assignment and assignment.group().rstrip("+=") in self.integer_names:
            self.fail(f"as the value of {assignment.group().rstrip('+=')}, declared -i or -n (arithmetic)")
        if cmd["cond"] and previous in _ARITH_OPS:
            self.fail(f"as an operand of {previous} in [[ ]] (bash evaluates it as arithmetic); use [ ] or test")

    def _check_condition(self, ctx: dict[str, Any]) -> None:
        words, marked = ctx["words"], ctx["marker_words"]
        for i, word in enumerate(words):
            if word in _ARITH_OPS and ({i - 1, i + 1} & marked):
                self.fail(f"as an operand of {word} in [[ ]] (bash evaluates it as arithmetic); use test / [ ]")

    def _end_command(self, ctx: dict[str, Any]) -> None:
        self._end_word(ctx)
        ctx.update(words=[], marker_words=set(), command_start=True, command=None, dashdash=False, cond=False,
                   integer_declare=False, redirect=False)

    def _slot(self, index: int, quoted: bool, word_start: bool, dashdash: bool = False) -> None:
        self.slots.append(Slot(index, quoted, word_start and not dashdash, self.line))

    # -- contexts -------------------------------------------------------------

    @staticmethod
    def _at_word_start(ctx: dict[str, Any]) -> bool:
        """Nothing but empty quotes ('' or "") before this point of the word."""
        return not ctx["word_marker"] and not ctx["word"].replace("''", "").replace('""', "")

    def _cmd(self, ctx: dict[str, Any]) -> None:
        text, c = self.text, self.text[self.i]
        if c == OPEN:
            index = self._marker()
            if index is None:
                self.fail("next to a stray \\x01 character")
            self._check_use(ctx, ctx["word"])
            self._slot(index, False, self._at_word_start(ctx), ctx["dashdash"] or ctx["redirect"])
            ctx["word_marker"] = True
            return
        if c == "\\":
            if text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            if text.startswith("\n", self.i + 1):  # line continuation
                self._advance(2)
                return
            ctx["word"] += self._advance(2)
            return
        if c == "#" and not ctx["word"] and not ctx["word_marker"]:
            end = text.find("\n", self.i)
            end = len(text) if end < 0 else end
            for m in _MARKER.finditer(text, self.i, end):
                self.slots.append(Slot(int(m.group(1)), True, False, self.line))
            self.i = end
            return
        if c == "'":
            self.stack.append({"kind": "sq"})
            ctx["word"] += self._advance()
            return
        if c == '"':
            self.stack.append({"kind": "dq", "word_start": self._at_word_start(ctx), "content": False})
            ctx["word"] += self._advance()
            return
        if c == "`":
            self.stack.append({"kind": "bt"})
            ctx["word"] += self._advance()
            return
        if c == "$":
            if self._dollar(ctx):
                return
        if c == "(" and ctx["command_start"] and not ctx["word"] and text.startswith("((", self.i):
            self.stack.append({"kind": "arith", "closer": "))", "depth": 0})
            self._advance(2)
            return
        if c in "<>" and text.startswith("(", self.i + 1):  # process substitution
            ctx["word"] += self._advance(2)
            self.stack.append(self._new_cmd(")"))
            return
        if c == "<" and text.startswith("<<", self.i) and not text.startswith("<<<", self.i):
            self._heredoc_operator(ctx)
            return
        if c in "<>":
            self._end_word(ctx)
            while self.i < len(text) and text[self.i] in "<>&|":
                self._advance()
            ctx["redirect"] = True
            return
        if c == "(":
            self._end_word(ctx)
            ctx["depth"] += 1
            self._advance()
            self._end_command(ctx)
            return
        if c == ")":
            if ctx["closer"] == ")" and ctx["depth"] == 0 and ctx["case"] == 0:
                self._end_word(ctx)
                self.stack.pop()
                self._advance()
                return
            ctx["depth"] = max(0, ctx["depth"] - 1)
            self._advance()
            self._end_command(ctx)
            return
        if c == "\n":
            self._end_command(ctx)
            self._advance()
            if self.pending_heredocs:
                self._start_heredoc()
            return
        if c in ";&|":
            self._end_command(ctx)
            self._advance()
            return
        if c in " \t":
            self._end_word(ctx)
            self._advance()
            return
        ctx["word"] += self._advance()

    def _dollar(self, ctx: dict[str, Any]) -> bool:
        """``$`` openings shared by commands, double quotes and heredoc bodies."""
        text = self.text
        nxt = text[self.i + 1:self.i + 2]
        if text.startswith("$((", self.i):
            self.stack.append({"kind": "arith", "closer": "))", "depth": 0})
        elif nxt == "(":
            self.stack.append(self._new_cmd(")"))
        elif nxt == "{":
            self.stack.append({"kind": "param", "depth": 0})
        elif nxt == "[":
            self.stack.append({"kind": "arith", "closer": "]", "depth": 0})
        elif nxt == "'" and ctx["kind"] == "cmd":
            self.stack.append({"kind": "ansi"})
        else:
            return False
        if ctx["kind"] == "cmd":
            ctx["word"] += "$"
        self._advance(2 if not text.startswith("$((", self.i) else 3)
        return True

    def _sq(self, ctx: dict[str, Any]) -> None:
        end = self.text.find("'", self.i)
        end = len(self.text) if end < 0 else end
        if self.text.find(OPEN, self.i, end) >= 0:
            self._advance(self.text.find(OPEN, self.i, end) - self.i)
            self.fail("inside single quotes (nothing expands there; close the quotes around it)")
        self._advance(end + 1 - self.i)
        self.stack.pop()

    def _ansi(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            self.fail("inside $'...' quotes")
        if c == "\\":
            self._advance(2)
        elif c == "'":
            self._advance()
            self.stack.pop()
        else:
            self._advance()

    def _dq(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            index = self._marker()
            if index is None:
                self.fail("next to a stray \\x01 character")
            cmd = self._cmd_ctx()
            self._check_use(cmd, cmd["word"])
            self._slot(index, True, ctx["word_start"] and not ctx["content"], cmd["dashdash"])
            ctx["content"] = True
            cmd["word_marker"] = True
            return
        if c == "\\":
            if self.text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            self._advance(2)
            ctx["content"] = True
            return
        if c == '"':
            self._advance()
            self.stack.pop()
            return
        if c == "`":
            self.stack.append({"kind": "bt"})
            self._advance()
            return
        if c == "$" and self._dollar(ctx):
            return
        ctx["content"] = True
        self._advance()

    def _bt(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            self.fail("inside backticks (use $( ) instead)")
        if c == "\\":
            self._advance(2)
        elif c == "`":
            self._advance()
            self.stack.pop()
        else:
            self._advance()

    def _param(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            self.fail("inside ${...} (subscripts and offsets there are arithmetic)")
        if c == "\\":
            self._advance(2)
            return
        if c == "{":
            ctx["depth"] += 1
        elif c == "}":
            if ctx["depth"] == 0:
                self._advance()
                self.stack.pop()
                return
            ctx["depth"] -= 1
        self._advance()

    def _arith(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            self.fail("in arithmetic (bash evaluates a[$(cmd)] there)")
        if ctx["closer"] == "))" and c == "(":
            ctx["depth"] += 1
        elif ctx["closer"] == "))" and c == ")":
            if ctx["depth"] == 0 and self.text.startswith("))", self.i):
                self._advance(2)
                self.stack.pop()
                return
            ctx["depth"] = max(0, ctx["depth"] - 1)
        elif ctx["closer"] == "]" and c == "]":
            self._advance()
            self.stack.pop()
            return
        self._advance()

    # -- here-documents ---------------------------------------------------------

    def _heredoc_operator(self, ctx: dict[str, Any]) -> None:
        self._end_word(ctx)
        self._advance(2)
        strip = self.text.startswith("-", self.i)
        if strip:
            self._advance()
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self._advance()
        delimiter, quoted = "", False
        while self.i < len(self.text) and self.text[self.i] not in " \t\n;&|<>()":
            c = self.text[self.i]
            if c == OPEN:
                self.fail("as a here-document delimiter")
            if c in "'\"":
                quoted = True
                end = self.text.find(c, self.i + 1)
                end = len(self.text) if end < 0 else end
                if OPEN in self.text[self.i:end]:
                    self.fail("as a here-document delimiter")
                delimiter += self.text[self.i + 1:end]
                self._advance(end + 1 - self.i)
            elif c == "\\":
                quoted = True
                delimiter += self.text[self.i + 1:self.i + 2]
                self._advance(2)
            else:
                delimiter += self._advance()
        self.pending_heredocs.append((delimiter, quoted, strip))

    def _start_heredoc(self) -> None:
        delimiter, quoted, strip = self.pending_heredocs.pop(0)
        self.stack.append({"kind": "heredoc", "delimiter": delimiter, "quoted": quoted, "strip": strip,
                           "line_start": True})

    def _heredoc(self, ctx: dict[str, Any]) -> None:
        text = self.text
        if ctx["line_start"]:
            end = text.find("\n", self.i)
            end = len(text) if end < 0 else end
            line = text[self.i:end]
            if (line.lstrip("\t") if ctx["strip"] else line) == ctx["delimiter"]:
                self._advance(min(end + 1, len(text)) - self.i)
                self.stack.pop()
                if self.pending_heredocs:
                    self._start_heredoc()
                return
            ctx["line_start"] = False
            if ctx["quoted"]:
                if OPEN in line:
                    self._advance(line.index(OPEN))
                    self.fail("inside a quoted here-document (<<'EOF' expands nothing: use <<EOF)")
                self._advance(min(end + 1, len(text)) - self.i)
                ctx["line_start"] = True
                return
        c = text[self.i]
        if c == OPEN:
            index = self._marker()
            if index is None:
                self.fail("next to a stray \\x01 character")
            self._slot(index, True, False)
            return
        if c == "\\":
            if text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            self._advance(2)
            return
        if c == "`":
            self.stack.append({"kind": "bt"})
            self._advance()
            return
        if c == "$" and self._dollar(ctx):
            return
        if c == "\n":
            ctx["line_start"] = True
        self._advance()


def analyse(text: str) -> list[Slot]:
    """The context of every marker in ``text``; raises :class:`UnsafeContext`.
    A marker the lexer could not place is refused, never passed through."""
    if OPEN not in text:
        return []
    slots = _Lexer(text).run()
    placed = {slot.index for slot in slots}
    for m in _MARKER.finditer(text):
        if int(m.group(1)) not in placed:
            raise UnsafeContext(1 + text[:m.start()].count("\n"), "where dagrun cannot tell how bash reads it")
    return slots


def check_source(source: str) -> None:
    """Compile-time check of a shell template's source: every ``{{ }}`` in a
    context that can be made safe. ``{% %}`` blocks are read as empty, so
    each branch of an ``if`` is checked in place."""
    if OPEN in source or CLOSE in source:
        raise UnsafeContext(1 + source[:max(source.find(OPEN), source.find(CLOSE))].count("\n"),
                            "in a script holding \\x01 or \\x02 characters")
    counter = iter(range(1_000_000))
    stripped = _STATEMENT.sub(lambda m: "\n" * m.group().count("\n"), source)
    marked = _EXPRESSION.sub(lambda m: f"{OPEN}{next(counter)}{CLOSE}" + "\n" * m.group().count("\n"), stripped)
    analyse(marked)


# -- rendering -------------------------------------------------------------------

_collector: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("dagrun_shell_values", default=None)


@pass_context  # a context-passing finalize is never applied to constants at compile time
def finalize_marker(context: Any, value: Any) -> str:
    """The SHELL environment's ``finalize``: keep the value, emit a marker."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # names the undefined variable
    values = _collector.get()
    if values is None:  # rendered outside render_shell (a bug): refuse rather than inline
        raise ShellValueError("shell text rendered outside render_shell")
    values.append(value)
    return f"{OPEN}{len(values) - 1}{CLOSE}"


def collecting() -> tuple[list[Any], contextvars.Token]:
    values: list[Any] = []
    return values, _collector.set(values)


def release(token: contextvars.Token) -> None:
    _collector.reset(token)


def as_text(value: Any) -> str:
    """How a value reads as text: lists joined by spaces, mappings as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, Mapping)):
        return json.dumps(dict(value), sort_keys=True, default=str)
    if isinstance(value, (list, tuple)):
        return " ".join(as_text(v) for v in value)
    return str(value)


def substitute(rendered: str, values: list[Any], *, start: int = 1) -> ShellScript:
    """Replace the markers of ``rendered`` by variable references."""
    slots = {slot.index: slot for slot in analyse(rendered)}
    env: dict[str, str] = {}
    counter = [start]

    def var(text: str, slot: Slot) -> str:
        if "\0" in text:
            raise ShellValueError(f"line {slot.line}: a value holds a NUL character, which a script cannot receive")
        if len(text.encode("utf-8", "surrogateescape")) > MAX_VALUE_BYTES:
            raise ShellValueError(f"line {slot.line}: a value is larger than {MAX_VALUE_BYTES} bytes")
        if slot.word_start and text.startswith("-"):
            raise ShellValueError(f"line {slot.line}: the value {text[:40]!r} starts with '-' and would be read "
                                  "as an option; put '--' before it in the script")
        name = f"{VALUE_PREFIX}{counter[0]}"
        counter[0] += 1
        env[name] = text
        return name

    def replace(m: re.Match) -> str:
        slot = slots[int(m.group(1))]
        value = values[slot.index]
        if slot.quoted:
            return "${" + var(as_text(value), slot) + "}"
        if isinstance(value, (list, tuple)):  # one word per item
            return " ".join('"${' + var(as_text(v), slot) + '}"' for v in value)
        return '"${' + var(as_text(value), slot) + '}"'

    return ShellScript(_MARKER.sub(replace, rendered), env)
