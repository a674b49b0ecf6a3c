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

import functools
import os
import shutil
import contextvars
import json

from jinja2 import Undefined, pass_context
import re
from dataclasses import dataclass, replace as _replace
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any, Iterable

OPEN, CLOSE = "\x01", "\x02"
VALUE_PREFIX = "DAGRUN_VALUE_"
MAX_VALUE_BYTES = 128 * 1024  # Linux refuses a larger single environment string (MAX_ARG_STRLEN)
_MARKER = MARKER = re.compile("\x01(\\d+)\x02")
_WORD_REFERENCE = re.compile(r'"\$\{(' + VALUE_PREFIX + r'\d+)\}"')
_REFERENCE = re.compile(r'\$\{(' + VALUE_PREFIX + r'\d+)\}')
_STATEMENT = re.compile(r"\{%-?.*?-?%\}|\{#.*?#\}", re.S)
_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.S)
_ARITH_OPS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
# Commands that run another command, or their arguments as code: a value may
# not be given to them at all (not as an argument, a here-document, a
# here-string, or through a $( ) in their arguments). Pass it through a
# variable or a file instead.
RUNNERS = frozenset({
    "eval", "source", ".", "trap", "let", "alias", "coproc", "exec", "command", "builtin", "time", "enable",
    "su", "sudo", "doas", "runuser", "pkexec", "ssh", "rsh", "chroot", "setsid", "nohup", "nice", "ionice",
    "timeout", "env", "stdbuf", "flock", "watch", "script", "unshare", "nsenter", "bwrap", "systemd-run",
    "xargs", "parallel", "find", "expect", "at", "batch", "crontab", "strace", "ltrace", "taskset", "chrt",
    "make", "gdb", "vim", "vi", "ex", "emacs", "compgen", "complete", "bind", "fc",
    "sg", "setpriv", "tmux", "screen", "fakeroot", "dbus-run-session", "unbuffer", "faketime", "capsh",
    "start-stop-daemon", "chpst", "lxc-attach", "systemd-nspawn", "machinectl", "sqlite3", "sftp", "ed", "ftp",
    "npx", "uvx", "pipx",  # (they run the package a word names)
    "prlimit", "setarch", "ssh-agent", "pg_virtualenv", "sshpass", "firejail", "proot",  # (helper-57: CMD after)
    "bunx", "just", "nix-shell", "ansible", "corepack",  # (helper-58/59: a package or a recipe, a --run...)
    "ansible-playbook", "ansible-pull", "ansible-console",  # (their -e values are Jinja to Ansible)
    # (helper-61) more that run the command after them, or their input (newgrp's shell, m4's esyscmd)
    "newgrp", "linux32", "linux64", "i386", "x86_64", "choom", "perf", "gosu", "su-exec", "tini", "eatmydata",
    "run0", "numactl", "systemd-inhibit", "runcon", "valgrind", "xvfb-run", "dbus-launch", "cgexec", "torsocks",
    "proxychains", "chronic", "ifne", "rlwrap", "setuidgid", "envdir", "softlimit", "m4", "catchsegv", "systemd-cat",
    "hash",  # (hash -p PATH NAME: a value would choose the program NAME runs)
    "pg_ctl", "pg_ctlcluster",  # (helper-69: pg_ctl pastes -D, -o and -l into a shell command)
    "socat",  # (helper-70: an address may be SYSTEM:cmd or EXEC:cmd)
    # (helper-74: cmake -E env CMD, -P SCRIPT) build tools run the build files of the folder they are given
    "cmake", "ctest", "cpack", "meson", "ninja", "scons", "gradle", "gradlew", "mvn", "mvnw", "ant", "bazel",
    "sbt", "rake", "tox", "nox",
    # (helper-75) other names of make and of editors and wrappers above; C compilers (a value in -D is C code,
    # a file named by one is compiled); more programs that run the command or code they are given
    "gmake", "bmake", "pmake", "remake", "colormake", "make-first-existing-target", "mvnDebug", "vim.basic",
    "vim.tiny", "vim.nox", "vim.gtk3", "view", "rview", "vimdiff", "rvim", "gvim", "nvim", "editor",
    "sensible-editor", "gdbtui", "fakeroot-tcp", "fakeroot-sysv", "valgrind.bin", "git-shell", "hyperfine",
    "mispipe", "pee", "schroot", "dumb-init", "luit", "systemd-socket-activate", "uclampset", "heaptrack",
    "memusage", "sotruss", "msgexec", "erl_call", "x-terminal-emulator", "xterm", "lftp", "gnuplot",
    "cc", "gcc", "g++", "c++", "clang", "clang++", "c99", "c89", "tcc", "cpp",
})
# Interpreters run a program given inline (-c, -e...), as their first operand
# (a file), or on stdin. A value may be an argument of that program, never
# the program: not in the inline code, not as the script, not on stdin when
# the program comes from stdin.
INTERPRETERS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "rbash",
                          "ash", "yash", "posh", "lksh", "luajit", "ipython", "R", "pwsh", "escript", "guile",
                          "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh", "wish", "bc", "dc", "osascript",
                          "psql", "mysql", "mariadb", "mongosh", "mongo",  # (their input has shell escapes: \!)
                          # (helper-71, helper-75) more languages that run inline code or their input
                          "erl", "elixir", "iex", "jshell", "ts-node", "tsx", "xonsh", "duckdb", "groovy", "scala",
                          "clojure", "kotlin", "swift", "racket", "sbcl", "clisp", "ghci", "runghc", "ocaml", "julia",
                          "Rscript", "php-cgi"})
# Little languages: the program is the first operand (or -e / -f); their input is data.
SCRIPTED = frozenset({"awk", "gawk", "mawk", "nawk", "sed", "jq",
                      "yq", "xq", "tomlq", "gojq", "jaq"})  # (helper-65: yq is jq's program, $ENV included)
_CODE_FLAGS = frozenset({"-c", "-e", "-E", "-r", "-m", "-f", "--eval", "--command", "--expression", "--file",
                         "--from-file"})
_GLUED_CODE = ("-c", "-e", "-E", "-r", "-m")
# Options whose argument is data to the program (a value may be one): awk's variables, psql's and mysql's
# connection settings and variables. (Not perl -I, ruby -r, node --require, php -d: those load code.)
_DATA_OPTIONS = {**{awk: frozenset({"-v", "--assign", "-F", "--field-separator"}) for awk in ("awk", "gawk", "mawk", "nawk")},
                 # (not psql's -d/--dbname: libpq reads a database name holding '=' or a URL as a whole
                 # connection string, dbname=x user=postgres; nor its operands, the first being that name)
                 "psql": frozenset({"-U", "-h", "-p", "-v", "--set", "--variable", "--username", "--host", "--port"}),
                 **{db: frozenset({"-u", "-h", "-D", "-P", "--user", "--host", "--database", "--port"})
                    for db in ("mysql", "mariadb")}}
# libpq's client programs: a database name holding '=' or a URL is a whole connection string to
# them, and each spells it its own way (-d, -l, --maint, an operand; getopt takes any unambiguous
# prefix, and bundles short options: -wd X). So the other way round: a value is taken only as the
# argument of an option listed here for the program (spelled whole, separate or glued), or as an
# operand of a program whose operands are plain names or files.
_LIBPQ_COMMON = ("-U", "--username", "-h", "--host", "-p", "--port")
_LIBPQ_VALUE_OPTIONS = {name: frozenset((*_LIBPQ_COMMON, *extra.split())) for name, extra in {
    # (not pg_dump's or pg_dumpall's -E: libpq pastes a client encoding into "set client_encoding to '%s'")
    "pg_dump": "-t --table -T --exclude-table -n --schema -N --exclude-schema -f --file -F --format -j --jobs "
               "-S --superuser -Z --compress -e --extension --exclude-table-data --section --role "
               "--lock-wait-timeout --rows-per-insert",
    "pg_dumpall": "-f --file -S --superuser --role --exclude-database",
    "pg_restore": "-f --file -F --format -j --jobs -n --schema -N --exclude-schema -t --table -T --trigger -I "
                  "--index -P --function -S --superuser -L --use-list --role --section",
    "createdb": "-O --owner -T --template -D --tablespace -E --encoding -l --locale --lc-collate --lc-ctype "
                "--icu-locale --locale-provider -S --strategy",
    "dropdb": "", "createuser": "-c --connection-limit -g --role", "dropuser": "",
    # (not vacuumdb's -t: PostgreSQL 15 pastes a table's "(columns)" into its SQL; reindexdb's -t and -i,
    # clusterdb's -t go through ::regclass; pgbench's -f names a SQL script)
    "vacuumdb": "-j --jobs", "reindexdb": "-t --table -i --index -j --jobs", "clusterdb": "-t --table",
    "pg_isready": "-t --timeout", "pgbench": "-c --client -j --jobs -T --time -t --transactions -s --scale",
    "pg_basebackup": "", "pg_receivewal": "", "pg_recvlogical": "", "pg_amcheck": "", "vacuumlo": "",
    "oid2name": "", "pg_rewind": "",
}.items()}
# (not pg_restore's archive: its content is SQL, run as the role it connects as, as psql -f FILE's is)
_LIBPQ_OPERANDS = frozenset({"createdb", "dropdb", "createuser", "dropuser"})  # names of what they make or drop
# ... and how those spell the database they connect to (after which a word is that, not an operand).
_LIBPQ_DATABASE_OPTIONS = {"createdb": ("--maintenance-db",), "dropdb": ("--maintenance-db",)}


_READS_INPUT_AS_DATA = SCRIPTED | {"perl", "ruby"}  # (perl -n/-p and ruby -n/-p programs read input as data)


# Programs (or an interpreter's script, or its -m module) whose subcommand runs code given as
# arguments or input (manage.py shell -c CODE, manage.py dbshell <<SQL where \\! runs a shell,
# uv run CMD, rails r CODE).
_CODE_SUBCOMMANDS = {
    **dict.fromkeys(("manage.py", "django-admin", "django-admin.py", "django"),
                    {"shell", "dbshell", "shell_plus", "runscript"}),
    **dict.fromkeys(("odoo-bin", "odoo"), {"shell"}), "flask": {"shell"},
    "uv": {"run"}, "poetry": {"run"}, "pipenv": {"run"}, "pdm": {"run"}, "hatch": {"run"},
    **dict.fromkeys(("conda", "mamba", "micromamba"), {"run"}),
    **dict.fromkeys(("pyenv", "rbenv", "asdf", "mise", "direnv"), {"exec", "x"}),
    "rails": {"runner", "r", "console", "c", "dbconsole", "db"},
    "npm": {"exec", "exe", "x", "explore", "expl", "init", "innit", "create"}, "pnpm": {"exec", "dlx", "create"},
    "yarn": {"exec", "dlx", "create", "node"}, "bun": {"x", "run"}, "bundle": {"exec", "exe", "ex", "e"}, "gem": {"exec"},
    "composer": {"exec"}, "deno": {"eval", "run"}, "artisan": {"tinker"}, "wp": {"eval", "shell", "eval-file"},
    "drush": {"ev", "php-eval", "php"}, "mix": {"run"}, "redis-cli": {"eval"},
    "go": {"run", "generate"}, "ip": {"exec"},  # (helper-61: go run PKG, ip netns exec NAME CMD)
    # (helper-71) python3 -m timeit CODE, -m pdb -c CMD, and modules that run the file or module a word names
    **dict.fromkeys(("timeit", "pdb", "cProfile", "profile", "trace", "doctest", "unittest", "runpy", "code",
                     "pytest", "py.test",
                     # (helper-74) consoles reading code (IPython -c, asyncio's and idlelib's prompts), and
                     # modules that import or unpickle what their arguments name
                     "IPython", "ipython", "idlelib", "asyncio", "pickle", "pydoc", "inspect", "uvicorn",
                     "gunicorn", "hypercorn", "daphne", "celery", "coverage"), {"*"}),
}


_ANY_CODE_SUBCOMMAND = frozenset().union(*_CODE_SUBCOMMANDS.values())
# Package managers' subcommands (or options) that install what their arguments name: the package's
# build, install scripts or plugins run as the account (root, for a workspace without a Linux user),
# so a value may not choose it, nor any other argument of such a command (an index, a source).
# The install_pip_requirements and install_system_packages actions take names, checked.
_INSTALLERS = {
    "pip": {"install", "download", "wheel", "config"}, "uv": {"pip", "add", "tool", "sync", "build"},
    "poetry": {"add", "install", "self", "config"}, "pipenv": {"install", "sync"}, "pdm": {"add", "install", "sync"},
    "rye": {"add", "sync", "install"}, "pixi": {"add", "install"}, "hatch": {"env"},
    "npm": {"install", "i", "in", "ins", "inst", "insta", "instal", "isnt", "isnta", "isntal", "isntall", "add",
            "ci", "clean-install", "ic", "install-clean", "isntall-clean", "install-test", "it", "install-ci-test",
            "cit", "clean-install-test", "sit", "update", "up", "upgrade", "udpate", "u", "link", "ln", "rebuild",
            "rb", "pack", "publish", "dedupe", "ddp", "audit", "config", "c", "pkg", "set"},
    "pnpm": {"add", "install", "i", "it", "install-test", "update", "up", "upgrade", "link", "ln", "rebuild", "rb",
             "import", "dedupe", "audit", "config", "c", "pkg"},
    "yarn": {"add", "install", "global", "up", "upgrade", "link", "import", "config", "dedupe"},
    "bun": {"add", "a", "install", "i", "update", "link", "pm"}, "deno": {"install", "add", "i"},
    "bundle": {"install", "add", "update", "i", "config"}, "composer": {"require", "req", "install", "update",
                                                                       "create-project", "global", "r", "i", "u"},
    "go": {"install", "get", "build", "test", "vet", "tool"},
    **dict.fromkeys(("apt-get", "apt", "aptitude"), {"install", "reinstall", "build-dep", "source", "satisfy",
                                                     "upgrade", "dist-upgrade", "full-upgrade", "dselect-upgrade"}),
    **dict.fromkeys(("dnf", "yum", "microdnf", "zypper"), {"install", "in", "reinstall", "localinstall", "upgrade",
                                                           "update", "up", "distro-sync", "swap"}),
    "apk": {"add"}, "snap": {"install"}, "flatpak": {"install"}, "brew": {"install", "reinstall", "tap"},
    **dict.fromkeys(("conda", "mamba", "micromamba"), {"install", "create", "update", "env"}),
    "luarocks": {"install", "i", "make", "build"}, "pecl": {"install"}, "opam": {"install"},
    "stack": {"install", "build"}, "cabal": {"install", "build"}, "dotnet": {"tool", "add", "restore"},
    "R": {"CMD"}, "Rscript": {"CMD"}, "nix": {"profile", "run", "shell", "develop", "build", "env"},
    "mise": {"use", "install", "exec", "x", "run"}, "code": {"--install-extension"}, "vagrant": {"plugin"},
    "helm": {"plugin", "install", "upgrade"}, "port": {"install"}, "sdk": {"install"},
    # every command of these installs, builds (runs a package's build scripts) or takes options that do
    **dict.fromkeys(("dpkg", "rpm", "gdebi", "pacman", "nix-env", "easy_install", "pip-sync", "pnpx", "cpan",
                     "cpanm", "gem", "cargo", "pipx"), {"*"}),
}
_ANY_INSTALLER_SUBCOMMAND = frozenset().union(*_INSTALLERS.values()) - {"*"}


# Whether an awk or sed program may run commands is read conservatively: a false refusal is a
# template to rephrase, a miss is a value run as root. An awk program's system(), getline, a pipe
# (not ||), |&, gawk's indirect @f() calls, a line continuation:
_AWK_RUNS_COMMANDS = re.compile(r"system|getline|\|&|(?<!\|)\|(?!\|)|@[A-Za-z_][A-Za-z0-9_]*\s*\(|\\\n")


# Inline code of another language (awk, perl, python, ruby, node) that reads the environment, and that
# may hand text to a shell: both read conservatively (subprocess.run([...]) with os.environ is refused too).
# (helper-70: $::ENV, %{"ENV"}, process["env"], const { env } = process; subprocess, Popen, two-argument open)
_READS_ENVIRONMENT = re.compile(r"(?i)ENV|getenv|process\b")
_HANDS_TO_A_SHELL = re.compile(r"(?i)system|popen|shell|getoutput|qx|`|%x|exec|spawn|getline|subprocess|\bopen\b|"
                               r"<>|\||child_process|\bsh\b|bash|Command")


_SED_SUBSTITUTION = re.compile(r"([sy])(.)((?:\\.|(?!\2).)*)\2((?:\\.|(?!\2).)*)\2([^;\n}]*)")
_SED_ADDRESS_REGEX = re.compile(r"(?:/(?:\\.|[^/])*/|\\(.)(?:\\.|(?!\1).)*\1)[IM]*")  # (/x/Ie: flags I, M)


def _sed_runs_commands(program: str) -> bool:
    """A GNU sed program's e command (at a command's place, after any
    address: 1ecmd too) or s///'s e flag (among other flags)."""
    if any(m.group(1) == "s" and "e" in m.group(5) for m in _SED_SUBSTITUTION.finditer(program)):
        return True
    rest = _SED_ADDRESS_REGEX.sub(" ", _SED_SUBSTITUTION.sub(";", program))  # (their text is no command)
    return bool(re.search(r"(?:^|[;\n{}!0-9$~,\s])e", rest))


def _program_runs_commands(name: str, raws: list[str]) -> bool:
    """May the program of this awk, sed, perl -n/-p or ruby -n/-p command
    run commands, with its input (or its variables) as their text? True
    also when dagrun cannot read the program: held in a variable, a file
    (-f, --source), or an option spelling it does not follow."""
    family = "awk" if name in ("awk", "gawk", "mawk", "nawk") else name if name in ("sed", "perl", "ruby") else None
    if family is None:
        return False
    read = [_as_read(raw) for raw in raws]  # (as bash reads them: '-e' is -e)
    if family in ("perl", "ruby"):  # -n/-p: the input is the -e program's data, and that program may eval it
        # ... and perl's <> (what -n reads) and two-argument open, ruby's Kernel#open, run a command
        # that a file name ending (or beginning) with | names: the arguments are that program's code
        # then (perl -e 'while (<>) {print}' "x|": helper-70)
        # (-a and -F imply -n since perl 5.20; readline and eof() read ARGV too: helper-71)
        operands = [text for text, _ in read if not text.startswith("-") or text == "-"]
        inline = any(re.fullmatch(r"-[A-Za-z0-9]*[eE]", text) or re.match(r"-[A-Za-z0-9]*e.", text)
                     for text, _ in read if not text.startswith("--"))
        if not inline and (not operands or _is_stdin_file(operands[0])):
            return True  # its program comes from its input (perl - ARGS <<EOF), read after its arguments (helper-74)
        return any(re.match(r"-[A-Za-z0-9]*[npaF]", text) and not text.startswith("--") for text, _ in read) or any(
            re.search(r"<(?:ARGV)?>|\bopen\b|\bARGF\b|\bgets\b|\breadline\b|\beof\b|(?<![$@%])\bARGV\b",
                      text.replace("<<>>", "")) for text, _ in read)
    program: list[str] = []
    expect = False  # the next word is the program (after -e)
    with_argument = _options_of(name)[2] - {"-e", "--expression", "-f", "--file"}
    skip = options_end = False
    for (bare, held), written in zip(read, raws):
        raw = bare if not held else written
        if skip:  # the argument of an option before it (awk -v n=..., -F:)
            skip = False
            continue
        if raw == "--" and not options_end:  # (what follows is the program, then files: helper-67)
            options_end = True
            continue
        if options_end:
            pass
        elif family == "awk" and raw.startswith("-W"):
            return True  # gawk's and mawk's -W exec FILE, -W source=...: not read
        elif raw in with_argument:
            skip = True
            continue
        elif raw.startswith("--"):
            given = raw.split("=", 1)[0]  # (getopt takes any unambiguous prefix: --expr=, --sourc=)
            program_options = ("--expression", "--file") if family == "sed" else (
                "--source", "--file", "--include", "--exec", "--load")
            if any(option.startswith(given) for option in program_options) and len(given) > 2:
                if "=" in raw or given not in ("--expression", "--source"):
                    return True  # glued, or from a file: dagrun does not read it
                expect = True
            continue
        elif raw.startswith("-"):
            # a bundle of short options (-ne 'p', -ne'p'): the letter taking the program, or a file
            letters = raw[1:]
            takes = "efl" if family == "sed" else "efiElvF"
            first = next((i for i, c in enumerate(letters) if c in takes + ("i" if family == "sed" else "")), None)
            if first is None:
                continue
            letter, rest = letters[first], letters[first + 1:]
            if letter == "e" and not rest:
                expect = True
            elif letter in "efiEl" and not (family == "sed" and letter in "il"):
                return True  # glued program (-ne'...'), or one from a file (-f, gawk -i/-E/-l)
            elif letter in "lvF" and not rest:
                skip = True  # its argument is the next word (awk -v n=..., sed -l 80)
            continue
        unquoted = _without_single_quoted(written)  # (awk '{print $1}': a field, not bash's $1)
        if "$" in unquoted.replace("\\$", "") or "`" in unquoted:
            if expect or not program:
                return True  # the program is held in a variable
        if expect or not program:
            program.append(bare)
            expect = False
    runs = _sed_runs_commands if family == "sed" else _AWK_RUNS_COMMANDS.search
    return any(runs(text) for text in program)


def _tar_reads_names_as_options(raws: list[str]) -> bool:
    """Does this tar read a list of names (-T, --files-from, old-style cT)
    in which a line beginning with '-' is an option (helper-65)?"""
    verbatim = False  # (it holds for the -T options after it, until --no-verbatim-files-from: helper-67)
    for i, a in enumerate(_as_read(raw)[0] for raw in raws):
        if a in ("--verbatim-files-from", "--no-verbatim-files-from"):
            verbatim = a == "--verbatim-files-from"
        elif (a.startswith("--files") or (a.startswith("-") and not a.startswith("--") and "T" in a)
              or (i == 0 and not a.startswith("-") and "T" in a)) and not verbatim:
            return True
    return False


_CURL_FILE_READERS = ("-d", "--data", "--data-binary", "--data-urlencode", "--json", "-H", "--header")
_CURL_GLUED_READERS = frozenset({"-d", "-H", *(o + "=" for o in _CURL_FILE_READERS if o.startswith("--"))})


def _curl_reads_a_file_there(cmd: dict[str, Any], written: str) -> bool:
    """Would curl read a file named by a value that begins here: the start
    of a -d / -H / --data-urlencode argument (@FILE), or right after NAME=
    in a -F argument (@FILE, <FILE)? (helper-75: root's files sent away.)"""
    if (cmd["command"] or "").rsplit("/", 1)[-1] != "curl":
        return False
    before = written.rsplit("\x01", 1)[0].replace('"', "").replace("'", "")  # (the word up to this value)
    previous = cmd["words"][-1] if len(cmd["words"]) > cmd["command_index"] + 1 else ""
    if before == "" and previous in _CURL_FILE_READERS or before in _CURL_GLUED_READERS:
        return True
    return bool(previous in ("-F", "--form") and re.fullmatch(r"[^=]*=", before)
                or re.fullmatch(r"(?:-F|--form=)[^=]*=", before))


def _is_stdin_file(word: str) -> bool:
    """Does ``word``, as a file name, name the standard input (``-``,
    /dev/stdin, /dev/fd/0, /proc/*/fd/0, however spelled: /dev//stdin,
    /dev/fd/../fd/0: helper-70)?"""
    if word == "-":
        return True
    path = "/" + os.path.normpath(word).lstrip("/") if word.startswith("/") else word
    return bool(re.fullmatch(r"/dev/stdin|/dev/fd/0+|/proc/[^/]+/fd/0+", path))


def _option_reads_stdin(name: str, raws: list[str]) -> str | None:
    """The option of this command (one whose argument it runs or takes
    settings from: curl -K, scp -F, apt-get -c) given its standard input
    (``-``, /dev/stdin) as that file, if any (helper-69)."""
    options = _COMMAND_OPTIONS.get(name, ())
    words = [_as_read(raw)[0] for raw in raws]
    if name == "git":  # git -c include.path=/dev/stdin: settings (core.fsmonitor...) from the input (helper-74)
        for i, word in enumerate(words):
            setting = words[i + 1] if word == "-c" and i + 1 < len(words) else word[2:] if word.startswith("-c") else ""
            key, _, value = setting.partition("=")
            if re.fullmatch(r"(?i)include(?:if\..*)?\.path", key) and _is_stdin_file(value):
                return "-c include.path"
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        for option in options:
            if option.startswith("--") or len(option) > 2:  # (any prefix getopt takes: --conf -, --config=-)
                given, _, glued = word.partition("=")
                if len(given) > 3 and option.startswith(given) and _is_stdin_file(glued if "=" in word else following):
                    return option
            elif word.startswith("-") and not word.startswith("--") and option[1] in word[1:]:
                rest = word[word.index(option[1], 1) + 1:]  # (a bundle: -sK -, -fsSLK-, -K/dev/stdin)
                if _is_stdin_file(rest or following):
                    return option
    return None


def _code_subcommand(name: str, kind: str | None, raws: list[str], table: Mapping[str, set[str]] = _CODE_SUBCOMMANDS,
                     any_subcommand: frozenset[str] = _ANY_CODE_SUBCOMMAND) -> str | None:
    """``manage.py shell`` and the like: the command (or the script an
    interpreter runs, or its ``-m`` module) is one of ``table``'s programs
    and an earlier argument is such a subcommand. ``raws``: the arguments as
    written (a quoted or variable script path: "$APP/manage.py")."""
    args = [(raw[1:] if raw.startswith(("$'", '$"')) else raw).replace('"', "").replace("'", "").replace("\\", "")
            for raw in raws]  # (as bash reads them: $'shell' is shell)
    program = name
    if kind == "interpreter" and name not in table:  # (deno eval: the interpreter's own)
        with_argument = _options_of(name)[2]
        i = 0
        while i < len(args) and args[i].startswith("-") and args[i] not in ("-", "--") and not args[i].startswith("-m"):
            bundle = re.match(r"-([A-Za-z]*?)m(.*)", args[i]) if not args[i].startswith("--") else None
            if bundle and not set(bundle.group(1)) & set("cWXQ"):  # python3 -Impip: m among flags (helper-67)
                args[i] = "-m" + bundle.group(2)
                break
            i += 2 if args[i] in with_argument else 1
        if i < len(args) and args[i] == "-m":
            i += 1  # python3 -m django shell
            if i < len(args):
                args[i] = args[i].split(".", 1)[0]  # (-m django.__main__)
        elif i < len(args) and args[i].startswith("-m"):
            args[i] = args[i][2:].split(".", 1)[0]  # (-mdjango)
        if i >= len(args):
            return None
        program, args = args[i].rsplit("/", 1)[-1], args[i + 1:]
    if "$" in program and any(a in any_subcommand for a in args):
        return f"{program} {next(a for a in args if a in any_subcommand)}"  # a script named through a variable
    subcommands = table.get(program, ())
    if "*" in subcommands:
        return program  # (every command of it)
    escaped = {i for i, raw in enumerate(raws[len(raws) - len(args):]) if raw.startswith("$'") and "\\" in raw}
    found = next((a for i, a in enumerate(args) if a in subcommands or (subcommands and (
        i in escaped or any(c in a for c in "${}*?[")))), None)  # ($'\x73hell': bash decodes it to shell)
    return None if found is None else f"{program} {found}"  # (a subcommand spelled through $C or she{l,}l too)


# libpq clients that take $PGDATABASE (or else $PGUSER) as a connection string when not given one.
_ENV_DATABASE_CLIENTS = frozenset({"vacuumdb", "reindexdb", "clusterdb", "pgbench", "pg_amcheck"})


def _names_its_database(name: str, raws: list[str]) -> bool:
    """Is the database written in the command (-d NAME, --dbname=NAME, an
    operand, or --all), so $PGDATABASE and $PGUSER are not its database?"""
    data = _LIBPQ_VALUE_OPTIONS.get(name, frozenset())
    previous = None
    for written in raws:
        raw, held = _as_read(written)  # ('-a' is -a)
        literal = not held and "$" not in raw and "`" not in raw
        if raw in ("-a", "--all"):
            return True
        if literal and (raw.startswith("--dbname=") or (raw.startswith("-d") and len(raw) > 2)
                        or previous in ("-d", "--dbname")):
            return True
        if literal and not raw.startswith("-") and previous not in data and previous not in ("-d", "--dbname"):
            return True  # an operand: the database
        previous = raw
    return False


def _libpq_database_name(name: str, words: list[str], word: str, raws: list[str], raw: str) -> bool:
    """Might the word being read (``word``, written ``raw``, after ``words``
    written ``raws``) be a libpq client's database name (anything but an
    option's argument listed in _LIBPQ_VALUE_OPTIONS, or an operand of a
    program in _LIBPQ_OPERANDS)?"""
    allowed = _LIBPQ_VALUE_OPTIONS[name]
    previous = words[-1] if words else None
    if raws and ("$" in raws[-1] or "`" in raws[-1]):
        return True  # an option held in a variable ("$opt" X): which one, dagrun cannot tell
    if any(form in raw for form in ("[@]", "[*]", "$@", "$*")):
        return True  # an array's items: options among them
    if previous in allowed:
        return False
    if word.startswith("--"):  # (the value glued to it: --username=X)
        return word.split("=", 1)[0] not in allowed or "=" not in word
    if word.startswith("-"):  # -UX
        return word[:2] not in allowed
    if name not in _LIBPQ_OPERANDS:
        return True
    if previous is None or not previous.startswith("-") or previous == "--":
        return False  # an operand: a file, a new name
    database = _LIBPQ_DATABASE_OPTIONS.get(name, ())
    if previous.startswith("--"):  # (getopt takes any unambiguous prefix of a long option)
        return len(previous) < 4 or any(option.startswith(previous) for option in database if option.startswith("--"))
    return any(option[1] in previous[1:] for option in database if not option.startswith("--"))  # -wd X


_ANSI_ESCAPES = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                 "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}
_ANSI_NUMERIC = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{1,4})|U([0-9A-Fa-f]{1,8}))")
_EXPANDS = re.compile(r"\$(?:[A-Za-z_{(\[0-9@*#?$!-])")


_VERSIONED = re.compile(r"(?<=[A-Za-z])-?[0-9][0-9.]*t?(?:-[A-Za-z0-9_]+)*\Z")  # (pip-3.11, pip3.12t)


def _known_name(command: str) -> str:
    """A program's name with its version taken off when that names one the
    rules know (tclsh8.6 is tclsh, perl5.36-x86_64-linux-gnu perl, ksh93
    ksh: Debian installs them so); any other name as it is."""
    folder, _, base = command.rpartition("/")
    if base in _KNOWN_PROGRAMS:
        return command
    stem = _VERSIONED.sub("", base)
    if stem not in _KNOWN_PROGRAMS:
        return command
    return f"{folder}/{stem}" if folder else stem


# Variables whose content dagrun or the system sets and that never begin with '-' (a folder, a number),
# as long as no value is given to them (runs_as_code refuses that: helper-65), read whole ($HOME, not
# ${HOME##*/}: a home's last folder may begin with '-').
# (Not $USER, $LOGNAME, $TMPDIR, $OLDPWD, $!: a step may have them empty, and "$USER$X" is then $X: helper-67.)
_NEVER_OPTIONS = frozenset({"HOME", "PWD", "DAGRUN_ATTEMPT", "BASHPID", "PPID", "UID", "EUID", "$", "?", "#"})
_WHOLE_NEVER_OPTION = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*|[$!?#])\}|([A-Za-z_][A-Za-z0-9_]*|[$!?#]))")
# Commands that read no option from such a word, or none that does harm: echo's -n/-e, cd's -L/-P,
# [[ ]] (not a command), return and exit (a number). ([ and test: only their quoted words, below.)
_TAKE_NO_OPTIONS = frozenset({"echo", "cd", "[[", "return", "exit", "shift", ":", "true", "false",
                              "for", "select", "case", "in"})  # (and a loop's list, a case's word)
# An argument's beginning, past what is empty ($'', "") and any '-' (-"$N" is an option N spells):
_EMPTY_START = re.compile(r"""\A(?:\$?''|\$?""|\$(?=["']))+""")
_LEADING_EXPANSION = re.compile(r"""\A["']*(?:[-+]+[A-Za-z0-9]*)?["']*(?:\$\{([A-Za-z_][A-Za-z0-9_]*|[$!?#])\}|\$([A-Za-z_][A-Za-z0-9_]*|[$!?#])"""
                                r"""|\$\{?!?[A-Za-z_0-9@*#?$!-]|\$\(|`|\{[^}]*(?:,|\.\.)[^}]*\})""")  # (whole: $N, ${N})
_GLOB = frozenset("*?[")
_TEST_BINARY = frozenset({"=", "==", "!=", "<", ">", "-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-nt", "-ot", "-ef",
                          "-a", "-o", "]", ")"})
OPTION_FROM_EXPANSION = (
    "through an argument that a variable, a command's output or a brace expansion begins, or that an unquoted "
    "variable splits into words, before any -- (in a script holding values): a value there (a copy, a part, a "
    "line) that begins with '-' is read as an option (git clone \"$REPO\" takes --upload-pack=CMD); put -- "
    "before such arguments (git clone -- \"$REPO\" dir, cp -- \"$a\" \"$b\") and quote variables")


def _option_from_expansion(command: str, raw: str, functions: set[str], before: list[str]) -> bool:
    """May the argument ``raw`` (as written) be an option that an expansion
    chose: begun by a variable (but those in _NEVER_OPTIONS, whole), a
    command's output, a brace expansion or a glob (file names: a cloned
    repository's), or holding an unquoted variable (split into words)?
    Not for a function of the script (its body is read where it uses its
    arguments), nor printf's arguments after its format. [ and test take
    only quoted expansions: a split word may be an operator, and -v
    evaluates its operand (-o -v a[$(cmd)])."""
    if command in _TAKE_NO_OPTIONS or command in functions or (command == "printf" and _after_format(before)):
        return False
    if command in _READ_ARGUMENTS and before and re.fullmatch(r"-[rse]*[" + "".join(
            o[1] for o in _READ_ARGUMENTS[command]) + "]", before[-1]):
        return False  # the argument of an option that takes one (read -p "$PROMPT", read -rd "$D")
    written, raw = raw, _EMPTY_START.sub("", raw)
    unquoted = _WHOLE_NEVER_OPTION.sub(lambda m: "" if (m.group(1) or m.group(2)) in _NEVER_OPTIONS else m.group(),
                                       _QUOTED.sub("", raw))
    if command in ("[", "test"):
        return bool(_EXPANSION.search(unquoted) or "$(" in unquoted or "`" in unquoted or _GLOB & set(unquoted))
    first = _SINGLE_QUOTED.match(raw)
    if first is not None and _as_read(written)[0][:1] not in ("", "-", "+"):  # ('{print $1, n}': a literal
        return bool(_EXPANSION.search(unquoted))  # begins it; not $'\x2d'"$X", a dash: helper-70)
    bare, dynamic = _as_read(_MARKER.sub("0", written))  # (a {{ }} after dashes is checked when it runs)
    if dynamic and re.fullmatch(r"[-+]+[A-Za-z0-9]*", bare):  # (dashes, however quoted: $'\x2d\x2d'"$X")
        return True
    leading = _LEADING_EXPANSION.match(raw)
    if leading and (leading.group(1) or leading.group(2)) not in _NEVER_OPTIONS:
        return True
    return raw[:1] in _GLOB or bool(re.match(r"[@!+?*]\(", raw)) or bool(_EXPANSION.search(unquoted))


_READ_ARGUMENTS = {"read": ("-d", "-i", "-n", "-N", "-p", "-t", "-u"), "mapfile": ("-d", "-n", "-O", "-s", "-u", "-c"),
                   "readarray": ("-d", "-n", "-O", "-s", "-u", "-c")}


def _names_a_variable(builtin: str, written: str, before: list[str]) -> bool:
    """Is ``written`` (an argument of ``builtin``, after ``before``) the
    name of a variable given a value: printf -v NAME, read's and mapfile's
    names (read -a NAME), declare's NAME[=...], getopts' second operand?"""
    previous = before[-1] if before else ""
    if builtin == "printf":
        return previous == "-v" or (written.startswith("-v") and len(written) > 2 and not before)
    if builtin in _READ_ARGUMENTS:
        if previous in _READ_ARGUMENTS[builtin]:
            return False  # an option's argument: a prompt, a delimiter, a count
        return previous in ("-a", "-C") or written.startswith(("-a", "-C")) or not written.startswith("-")
    if builtin in DECLARE_BUILTINS:
        return not written.startswith(("-", "+")) and any(c in written.split("=", 1)[0] for c in "$`")
    if builtin == "getopts":
        return len(before) == 1
    return False


def _after_format(before: list[str]) -> bool:
    """Do printf's arguments ``before`` the next one hold its format (past -v NAME)?"""
    rest = before[2:] if before[:1] == ["-v"] else before[1:] if before[:1] and before[0].startswith("-v") else before
    return bool(rest[1:] if rest[:1] == ["--"] else rest)


def _as_read(raw: str) -> tuple[str, bool]:
    r"""A word as bash reads it after quote removal ('-c', "-c", \-c and
    $'\x2dc' are all -c), up to its first expansion, substitution or value:
    that text, and whether the word goes on past it (is not all literal).
    Options, programs and names are compared in this form: written in
    quotes they are the same options (helper-61)."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c in (OPEN, "`") or (c == "$" and _EXPANDS.match(raw, i)):
            return "".join(out), True
        if c == "\\":
            if raw.startswith("\n", i + 1):
                i += 2
                continue
            out.append(raw[i + 1:i + 2])
            i += 2
        elif c == "'":
            end = raw.find("'", i + 1)
            end = n if end < 0 else end
            out.append(raw[i + 1:end])
            i = end + 1
        elif raw.startswith('$"', i):  # (a translated string: its text, as in "...")
            i += 1
        elif raw.startswith("$'", i):
            i += 2
            while i < n and raw[i] != "'":
                if raw[i] == "\\" and i + 1 < n:
                    numeric = _ANSI_NUMERIC.match(raw, i)
                    if numeric:
                        octal, hexa, u4, u8 = numeric.groups()
                        code = int(octal, 8) if octal else int(hexa or u4 or u8, 16)
                        out.append(chr(code) if code < 0x110000 else "?")
                        i = numeric.end()
                        continue
                    if raw[i + 1] == "c":  # \cX: a control character
                        out.append(chr(ord(raw[i + 2:i + 3] or "@") & 0x1f))
                        i += 3
                        continue
                    out.append(_ANSI_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                    i += 2
                else:
                    out.append(raw[i])
                    i += 1
            i += 1
        elif c == '"':
            i += 1
            while i < n and raw[i] != '"':
                d = raw[i]
                if d in (OPEN, "`") or (d == "$" and _EXPANDS.match(raw, i)):
                    return "".join(out), True
                if d == "\\" and raw[i + 1:i + 2] in ('"', "\\", "$", "`", "\n"):
                    out.append("" if raw[i + 1] == "\n" else raw[i + 1])
                    i += 2
                    continue
                out.append(d)
                i += 1
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out), False


_SHELL_NAMES = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "rbash", "fish", "csh", "tcsh", "busybox",
                          "ash", "yash", "posh", "lksh"})
# A program file that is the program's input: a here-document there is the program.
# Interpreters' long options (and node's short ones) that take no argument: a script after them is one.
_FLAG_ONLY = frozenset({"--", "--help", "--version", "--verbose", "--quiet", "--inspect", "--inspect-brk",
                        "--trace-warnings", "--no-warnings", "--enable-source-maps", "--experimental-modules",
                        "--no-deprecation", "--preserve-symlinks", "--watch", "--test", "--check", "-v", "-h",
                        "-i", "--interactive", "--norc", "--noprofile", "--login", "--posix", "--restricted",
                        "--debug", "--warnings", "--safe-mode", "--no-user-site"})
_DESCRIPTOR_NAME = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*(?:\[[^]]*\])?\}")  # ({fd}>, {a[0]}>: helper-74)
_COMPOUND_ENDS = frozenset({"fi", "done", "esac", "}"})  # the input of a compound command goes to its commands
_COMPOUND_STARTS = frozenset({"if", "while", "until", "for", "select", "case", "{"})
_FUNCTION = re.compile(r"(?m)(?:^|[;&|{(]\s*|\bfunction\s+)([^\s(){};&|<>'\"$`]+)\s*\(\s*\)|\bfunction\s+([^\s(){};&|<>'\"$`]+)")
INPUT_ELSEWHERE = ("in input given to a group, a subshell, a compound command (if, for, while, case) or a function, or "
                   "on a descriptor other than 0 (dagrun cannot tell which command reads it, perhaps one that runs "
                   "it): give it to the command itself")


def _shell_program(args: list[str]) -> tuple[bool, bool, bool]:
    """``_program`` for a shell. -c is a flag (alone or among others: -ec,
    -xc) saying that the first operand is the code; -s (or no operand)
    reads the program from stdin; -o/-O take an argument."""
    command_string = stdin = skip = False
    for word in args:
        if skip:
            skip = False
            continue
        if word == "--":
            continue
        if word in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            skip = True
            continue
        if word.startswith("--"):
            continue
        if word[:1] in "-+" and len(word) > 1:
            command_string = command_string or "c" in word[1:]
            stdin = stdin or "s" in word[1:]
            continue
        if _is_stdin_file(word) and not command_string:  # bash /dev/stdin <<EOF: the program is its input
            return True, False, True
        return True, False, stdin and not command_string  # the code (with -c) or the script file: fixed
    if stdin and not command_string:  # -s: the program is its input, operands are its arguments
        return True, False, True
    return False, command_string, False


@functools.lru_cache(maxsize=64)
def _options_of(base: str) -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
    """An interpreter's options that make the next word code (and their glued
    forms), and those whose next word is an argument (bash -o pipefail,
    python3 -W ignore): -e is errexit to bash but code to perl."""
    def of(code: str, glued: str, argument: str) -> tuple[frozenset[str], tuple[str, ...], frozenset[str]]:
        return frozenset(code.split()), tuple(glued.split()), frozenset(argument.split())
    if base in _SHELL_NAMES:
        return of("-c --command", "-c", "-o +o -O +O --rcfile --init-file")
    if base.startswith(("python", "pypy")):
        return of("-c -m", "-c -m", "-W -X -Q")
    if base.startswith("perl"):
        return of("-e -E", "-e -E", "-I")
    if base.startswith("ruby"):
        return of("-e", "-e", "-I -r -E -C")
    if base.startswith(("node", "deno", "bun")):
        return of("-e --eval -p --print", "-e -p", "-r --require --import --loader")
    if base.startswith("php"):
        return of("-r -f", "-r -f", "-d -c")
    if base == "psql":
        return of("-c --command -f --file", "-c -f", "-d -U -h -p -v --set --variable --dbname --username --host --port")
    if base == "erl":  # (helper-71: erl -eval CODE, -s/-run MODULE FUNCTION ARGS)
        return of("-eval -s -run -S -extra", "", "-pa -pz -sname -name -setcookie -config -boot -args_file")
    if base in ("mysql", "mariadb"):
        return of("-e --execute", "-e", "-u -h -D -P --user --host --database --port")
    if base.startswith("lua"):
        return of("-e", "-e", "-l")
    if base in ("awk", "gawk", "mawk", "nawk"):
        return of("-f --file -e --source", "-f -e", "-F -v --assign --field-separator")
    if base == "sed":
        return of("-e --expression -f --file", "-e -f", "-l --line-length")
    return _CODE_FLAGS, _GLUED_CODE, frozenset()
# Builtins whose arguments are variable names (bash evaluates a name's
# subscript as arithmetic: read 'a[$(cmd)]' runs cmd).
NAME_BUILTINS = frozenset({"read", "mapfile", "readarray", "unset", "getopts", "wait", "declare", "typeset",
                           "local", "export", "readonly"})
DECLARE_BUILTINS = frozenset({"declare", "typeset", "local", "export", "readonly"})
# bash's own variables that evaluate a value assigned to them as arithmetic (RANDOM='a[$(cmd)]' runs cmd).
_ARITHMETIC_SPECIALS = frozenset({"RANDOM", "SRANDOM", "OPTIND", "HISTCMD", "SECONDS", "LINENO"})
# Variables dagrun gives a step that hold values: the config (CONFIG_<KEY>) and its own.
_VALUE_NAMES = ("CONFIG_", "DAGRUN_VALUE_", "DAGRUN_WORKSPACE_ID", "DAGRUN_CONFIG", "DAGRUN_RESULT")
# Variables bash (or the programs it starts) runs or expands as code: no value is assigned to one
# (as execute_custom_script's env refuses them as names).
_SHELL_CODE_NAMES = frozenset({"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS0", "PS1", "PS2", "PS3", "PS4",
                               "PROMPT_COMMAND", "IFS", "CDPATH", "GLOBIGNORE", "LD_PRELOAD", "LD_LIBRARY_PATH",
                               "LD_AUDIT", "BASH_XTRACEFD", "EXECIGNORE", "HISTFILE", "INPUTRC",
                               "PATH",  # (PATH: a value would choose which program a command runs)
                               # ... and those the programs a script starts run as a command or load code from
                               "GIT_SSH", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND", "GIT_EXTERNAL_DIFF", "GIT_ASKPASS",
                               "SSH_ASKPASS", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_PAGER", "GIT_EXEC_PATH",
                               "GIT_TEMPLATE_DIR", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
                               "GIT_CONFIG", "EDITOR", "VISUAL", "PAGER", "MANPAGER", "BROWSER", "LESSOPEN",
                               "LESSCLOSE", "SHELL", "RSYNC_RSH", "CVS_RSH", "RSH", "NODE_OPTIONS", "NODE_PATH",
                               "PERL5OPT", "PERL5LIB", "PERLLIB", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
                               "PYTHONUSERBASE", "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
                               "JDK_JAVA_OPTIONS", "GCONV_PATH", "MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS",
                               # libpq's: a service (a file's settings), the server's options, where its files are
                               "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGOPTIONS", "PGPASSFILE", "PSQLRC",
                               "PSQL_HISTORY", "SSLKEYLOGFILE", "GLIBC_TUNABLES", "TZDIR", "LOCALDOMAIN",
                               "RES_OPTIONS"})
# Options whose argument a program runs as a command (rsync -e "ssh -p N", git -c core.sshCommand=...,
# tar --checkpoint-action=exec=...), and words after which its arguments are shell code.
_COMMAND_OPTIONS = {
    "rsync": ("-e", "--rsh", "--rsync-path"),
    "git": ("--upload-pack", "--receive-pack", "--exec", "--exec-path", "--template", "-x", "foreach", "run",
            # (helper-61) filter-branch's filters are shell code; difftool's command, grep's pager
            "--index-filter", "--tree-filter", "--env-filter", "--msg-filter", "--commit-filter", "--parent-filter",
            "--tag-name-filter", "--setup", "--extcmd", "-O", "--open-files-in-pager"),
    "tar": ("--checkpoint-action", "--to-command", "--use-compress-program", "-I", "--info-script", "-F",
            "--new-volume-script", "--rsh-command"),
    "zip": ("-TT", "--unzip-command"),
    "scp": ("-o", "-S", "-F"),
    "wget": ("-e", "--execute", "--use-askpass", "--config"),
    "curl": ("-K", "--config"),
    "openssl": ("-config", "--config", "-engine", "-provider-path"),
    "sort": ("--compress-program",),  # (helper-74)
    **dict.fromkeys(("sdiff", "diff3"), ("--diff-program",)),  # (helper-75)
    "gpg": ("--options", "--load-extension"), "gpg2": ("--options", "--load-extension"),
    # apt's settings and settings files (APT::Update::Pre-Invoke, DPkg::Pre-Install-Pkgs are commands),
    # dpkg's hooks
    **dict.fromkeys(("apt-get", "apt", "apt-cache", "apt-mark", "apt-config", "aptitude"),
                    ("-o", "--option", "-c", "--config-file")),
    "dpkg": ("--pre-invoke", "--post-invoke", "--status-logger", "--admindir", "--root", "--instdir"),
    "pip": ("--python",),  # (helper-67: the interpreter pip runs)
    "go": ("-vettool", "-toolexec", "-exec", "-C"),
}
# git settings whose value it runs as a command or that choose one (git -c KEY=..., --config-env,
# git config KEY ...); any other (user.name, user.email) takes a value.
_GIT_CODE_KEY = re.compile(
    r"(?i)\A(core\.(sshcommand|fsmonitor|pager|editor|askpass|hookspath|gitproxy|alternaterefscommand|"
    r"worktree|attributesfile|excludesfile)|sequence\.editor|diff\.(external|.*\.(command|textconv))|"
    r"merge\..*\.driver|filter\..*|credential\..*|alias\..*|include\..*|includeif\..*|gpg\..*|"
    r"uploadpack\..*|receive\..*|remote\..*\.(uploadpack|receivepack|vcs|proxy|url|pushurl)|pager\..*|"
    r"web\.browser|browser\..*|man\..*|difftool\..*|mergetool\..*|sendemail\..*|protocol\..*|url\..*|"
    r"ssh\..*|submodule\..*|init\.templatedir|safe\.directory|trailer\..*|interactive\..*|imap\..*|"
    r"instaweb\..*|guitool\..*|tool\..*|http\.(.*\.)?(proxy|curloptresolve))\Z")
_SHELL_CODE_PREFIXES = ("LD_", "BASH_FUNC_", "GIT_CONFIG_", "DYLD_", "npm_config_", "NPM_CONFIG_", "PIP_", "UV_",
                        "DBUS_", "GROFF_", "CMAKE_", "CGO_", "YARN_",  # (helper-74: a bus address may run a program)
                        "POETRY_", "PERL", "GEM_", "BUNDLE_", "XDG_", "OPENSSL_", "CURL_", "RSYNC_", "MAVEN_",
                        "GRADLE_", "CARGO_", "RUSTUP_", "ANSIBLE_", "RCLONE_", "TF_CLI_", "HELM_",
                        # (helper-60: what libpq's GSSAPI, TLS and LDAP libraries load or read)
                        "KRB5", "GSS_", "LDAP", "SSL_", "PKCS11_", "GNUTLS_", "P11_KIT")
# ... by their form (an interpreter's own: PYTHONPATH, RUBYOPT; not PYTHON_VERSION), and options,
# commands, programs and settings files of some program
_SHELL_CODE_FORM = re.compile(r"\A(PYTHON|RUBY)[A-Z]|\ALUA_INIT|_(OPTS|OPTIONS|COMMAND|CMD|PROG|PROGRAM|RSH|SHELL|EDITOR|"
                              r"PAGER|ASKPASS|HOOK|HOOKS|DIFF|DIFFTOOL|OPT)\Z|\AGIT_TRACE|OPT\Z")
_SHELL_CODE_MORE = frozenset({  # (helper-71: zip's, unzip's, gzip's options; git's object stores and index)
                              "ZIPOPT", "UNZIP", "UNZIPOPT", "ZIPINFO", "ZIPINFOOPT", "GZIP", "BZIP", "BZIP2",
                              "XZ_DEFAULTS", "ZSTD_NBTHREADS", "FCEDIT", "GIT_OBJECT_DIRECTORY",
                              # (helper-74) a bus address may be unixexec:path=PROGRAM; git's ext:: transport;
                              # what compilers, Tcl, groff, Lua and gpg load or run
                              "GIT_ALLOW_PROTOCOL", "GIT_PROTOCOL_FROM_USER", "RUSTC_WRAPPER", "RUSTFLAGS",
                              "RUSTDOCFLAGS", "RUSTC", "RUSTDOC", "TCL_LIBRARY", "TCLLIBPATH", "LUA_PATH", "LUA_CPATH",
                              "GNUPGHOME",
                              "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_INDEX_FILE", "GIT_NAMESPACE",
                              "HOME", "CLASSPATH", "MAKEFILES", "GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR",
                              "TERMINFO",
                              "LOCPATH", "NLSPATH", "HOSTALIASES", "TMPDIR", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
                              "JAVA_HOME", "KUBECONFIG", "LESS", "LESSKEY", "WGETRC", "SCREENRC", "VIMINIT", "EXINIT",
                              "MYVIMRC", "ZDOTDIR", "NPMRC", "GOPATH", "GOFLAGS", "GOPROXY", "GOROOT", "GOTOOLCHAIN",
                              "GOENV", "GOBIN", "GOPRIVATE", "GONOSUMDB", "GOINSECURE", "SSH_ASKPASS_REQUIRE",
                              "SSH_AUTH_SOCK", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH",
                              "CLOUDSDK_CONFIG", "AWS_CONFIG_FILE", "BOTO_CONFIG", "PGSERVICEFILE", "PGPASSFILE",
                              "PGSYSCONFDIR", "MYSQL_HOME", "GIT_CONFIG", "PSQLRC", "MYSQL_TEST_LOGIN_FILE",
                              "SQLITE_HISTORY", "TF_CLI_CONFIG_FILE", "NETRC", "CURL_CA_BUNDLE", "LUA_INIT", "PHPRC",
                              "PHP_INI_SCAN_DIR", "R_PROFILE", "R_PROFILE_USER", "R_ENVIRON", "R_ENVIRON_USER",
                              "APT_CONFIG", "DPKG_ADMINDIR", "DPKG_ROOT",
                              "CC", "CXX", "CPP", "LD", "AR", "AS", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS",
                              "MAKE", "NM", "RANLIB", "STRIP", "OBJCOPY", "PKG_CONFIG", "CMAKE_ARGS", "MAKEOPTS"})


# libpq's variables a value may fill (PGDATABASE, PGUSER and PGHOST checked when the step runs, see
# check_libpq_name): the others name files it opens (PGSSLKEY=ENGINE:... loads a shared object),
# services and server options.
_PG_VALUE_NAMES = frozenset({"PGDATABASE", "PGUSER", "PGHOST", "PGPORT", "PGAPPNAME", "PGPASSWORD",
                             "PGCONNECT_TIMEOUT", "PGTZ", "PGDATESTYLE", "PGCLIENTENCODING"})


def runs_as_code(name: str) -> bool:
    """Is ``name`` a variable bash, or a program a script starts, runs or
    loads code (or its settings) from, so that no value may be given to it?
    (Or one the rules trust never to hold an option: $USER, $PWD. A list
    cannot be complete: the README says how to pass values.)"""
    return name in _SHELL_CODE_NAMES or name in _SHELL_CODE_MORE or name in _NEVER_OPTIONS \
        or name.startswith(_SHELL_CODE_PREFIXES) \
        or bool(_SHELL_CODE_FORM.search(name)) or (name.startswith("PG") and name not in _PG_VALUE_NAMES)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPANSION = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*|[0-9*@_]|![A-Za-z_0-9]*)")
# Variables bash fills with what a command read or matched: they may hold a value (in code, as a command).
_FILLED = frozenset({"_", "BASH_REMATCH", "REPLY", "MAPFILE", "OPTARG", "COPROC"})
_POSITIONAL = frozenset("123456789*@")
_SINGLE_QUOTED = re.compile(r"'[^']*'")
MAY_BE_EMPTY_TEXT = "\x03"  # (stands in a word for "$NAME" in double quotes: text that may be empty)
_PLAIN_EXPANSION = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-])")
_QUOTED = re.compile(r"'[^']*'|\"(?:\\.|[^\"\\])*\"")
_BACKTICKS = re.compile(r"`((?:[^`\\]|\\.)+)`")


def _without_single_quoted(text: str) -> str:
    """``text`` without its '...' parts (nothing expands there: a program given them expands them, as data)."""
    return _SINGLE_QUOTED.sub("", text)
# Words after which "((" opens arithmetic even without a space (for((i=0;...)), if((n > 1))).
_BEFORE_ARITHMETIC = frozenset({"for", "if", "elif", "while", "until", "!", "then", "do", "else", "{", "time"})
_CONTROL = frozenset({"then", "do", "else", "elif", "if", "while", "until", "!", "{", "}"})
_ASSIGNMENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_LITERAL_NAME = re.compile(r"\A[A-Za-z0-9_./+-][A-Za-z0-9_.,:/+@%=-]*\Z")
_PYTHON_LIKE = re.compile(r"\A(py|python[0-9.]*t?|pypy[0-9.]*|perl[0-9.]*|ruby[0-9.]*|php[0-9.]*|node[0-9]*|lua[0-9.]*|"
                          r"Rscript|julia|deno|bun)\Z")


_KNOWN_PROGRAMS = frozenset(RUNNERS | INTERPRETERS | SCRIPTED | _SHELL_NAMES | set(_CODE_SUBCOMMANDS) | set(_INSTALLERS)
                            | set(_LIBPQ_VALUE_OPTIONS) | set(_COMMAND_OPTIONS) | set(_DATA_OPTIONS))


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
    word_start: bool  # the value begins a word (a leading '-' makes it an option) if `before` are empty
    line: int
    before: tuple[int, ...] = ()  # values earlier in the same word, with nothing else between
    options_end: bool = False  # after "--" (or a redirection's target): a '-' is no option here
    assignment: bool = False  # in a NAME=value word: a list may not become several words there
    assigned: str = ""  # the NAME of the NAME=value word it is in (quoted or not), if any
    after_dashes: bool = False  # only '-' or '+' before it in its word, before any --: -{{ n }} is an option


# Word text that may expand to nothing: what is left of $NAME, ${...}, $(...), $((...)), $[...] and `...` in a
# word (their insides are read by contexts of their own), and brace-expansion punctuation.
_MAY_BE_EMPTY = re.compile(r"\$'[^']*'|\$\{[^}]*\}?|\$\(\(?|\$\[|\$[A-Za-z_][A-Za-z0-9_]*|\$[0-9@*#?$!-]|`[^`]*`?|[{},]")


@dataclass(frozen=True, slots=True)
class ShellScript:
    """Script text that references its values as environment variables.
    ``str()`` is a display for people (records, output): each reference shown
    with its value, shell-quoted. What runs is ``text``, with ``values`` in
    the environment."""

    text: str
    values: Mapping[str, str]
    # The script evaluates text somewhere (arithmetic, a prompt, a name): a value with $ or ` in
    # it could run there through a variable that holds it, however the script spells that.
    evaluates: bool = False

    def __str__(self) -> str:
        import shlex
        text = _WORD_REFERENCE.sub(lambda m: shlex.quote(self.values.get(m.group(1), "")), self.text)
        return _REFERENCE.sub(lambda m: self.values.get(m.group(1), ""), text)


class _Lexer:
    """Just enough of bash's grammar to know the context of every marker.

    A stack of contexts: ``cmd`` (commands: top level, ``$( )``, ``<( )``,
    subshells), ``dq`` (double quotes), ``sq`` / ``ansi`` (single quotes,
    ``$'...'``), ``param`` (``${ }``), ``arith`` (``$(( ))``, ``(( ))``,
    ``$[ ]``, array subscripts), ``bt`` (backticks), ``heredoc`` (a body).
    A context may carry ``deny``, the reason any marker inside it (however
    deep) is refused; nested contexts inherit it. The lexer fails closed: a
    script that does not end where it began (an open quote, substitution,
    ``[[`` or here-document) is refused, since its reading could be wrong.
    """

    def __init__(self, text: str):
        self.text = text
        self.i = 0
        self.line = 1
        self.slots: list[Slot] = []
        self.stack: list[dict[str, Any]] = [self._new_cmd(None, None)]
        self.pending_heredocs: list[tuple[str, bool, bool, str | None]] = []  # delimiter, quoted, strip, deny
        # Assigning to these is arithmetic: declared -i / -n, and bash's own that evaluate what they are given.
        self.integer_names: set[str] = set(_ARITHMETIC_SPECIALS)
        # Arrays of the script: declare (typeset) re-reads a value given to one as a (...) list, as code.
        self.array_names: set[str] = set()
        self.declared: list[tuple[str, int]] = []  # (name, line) of each value a declare-family builtin assigns
        # Names that hold a value (assigned one, looped over one, read): bash evaluates a name's content
        # as arithmetic where arithmetic reads it (v={{ x }}; (( v > 1 )) runs x='a[$(cmd)]').
        self.tainted: set[str] = set()
        self.arithmetic: list[tuple[str, int]] = []  # (name, line) of each name arithmetic reads
        # Does the script evaluate text anywhere (arithmetic, -v names, namerefs, read, prompts)?
        # Bash offers too many ways for a value to get there through a variable to follow them all:
        # such a script gets no value holding $ or ` (what would run there), see substitute().
        self.evaluates = False
        # (name, line) of each expansion where it would be code: the command itself, or an argument
        # of a command that runs its arguments as code (eval, trap, sh -c, su -c, ssh...).
        self.code: list[tuple[str, int]] = []
        self.copies: list[tuple[str, list[str]]] = []  # (name, names its assigned text expands)
        self.outputs: set[str] = set()  # names assigned a command's output (x=$(f)): in code, they may hold a value
        self.dynamic_command: int | None = None  # line of a command whose name a command's output gives
        self.code_from_output: int | None = None  # line of code a command's output gives (eval "$(f)", bash <(f))
        self.env_database: int | None = None  # line of a libpq client left to take its database from $PGDATABASE
        self.piped_into: int | None = None  # line of a pipe into a program that runs what it reads
        self.unknown_nameref: int | None = None  # line of a declare -n whose target is not written in it
        # line of the first argument that a variable, a command's output or a brace expansion begins, or
        # that an unquoted one splits, before any "--": what it holds may be an option (helper-61, -64)
        self.option_from_expansion: int | None = None
        self._assigned_at: dict[str, int] = {}  # line of each name's first assignment
        # Names given a value other than as the whole of a NAME={{ x }} word (a copy, read, printf -v,
        # for, $(...)): for LIBPQ_NAME_VARIABLES, whose values are checked only in that word.
        self.indirect: set[str] = set()
        self.given: frozenset[str] = frozenset()  # a step's env names (checked when its template was compiled)
        self.functions = {a or b for a, b in _FUNCTION.findall(text)}  # (input given to one goes to what it runs)
        # ... and those the lexer saw defined (not a name in a here-document, a string, a comment: helper-65)
        self.defined: set[str] = set()
        self.environment_to_shell: int | None = None  # line of inline code reading the environment into a shell
        self.unknown_name: int | None = None  # line of a variable an expansion names given a value (printf -v "$n")
        self.compound: list[bool] = []  # per open if/while/for/case/{: does a command in it run its input?
        self.runs_input = False  # does a command of the script (at its top) run its input? (for sh -c CODE)
        self.compound_fed: list[bool] = []  # per open compound: is it the end of a pipe?
        # (line, holds a value, names) of each argument of a sh -c whose code a variable holds
        self.opaque_arguments: list[tuple[int, bool, list[str]]] = []

    # -- contexts and helpers -------------------------------------------------

    def _new_cmd(self, closer: str | None, deny: str | None) -> dict[str, Any]:
        return {"kind": "cmd", "closer": closer, "deny": deny, "depth": 0, "case": 0, "word": "",
                "word_markers": [], "word_literal": True, "words": [], "raws": [], "marker_words": set(),
                "command_start": True, "command": None, "command_literal": True, "dashdash": False,
                "cond": False, "integer_declare": False, "array_declare": False, "redirect": False,
                "for_name": None, "command_index": 0}

    def _push(self, kind: str, deny: str | None = None, **fields: Any) -> None:
        if kind == "arith":
            self.evaluates = True
        inherited = self._deny()
        self.stack.append({"kind": kind, "deny": inherited or deny, "start": self.i, "from_line": self.line, **fields})

    def _reads(self, text: str, line: int, skip_first: bool = False) -> None:
        """Arithmetic reads the names in ``text`` (and their contents)."""
        names = _IDENTIFIER.findall(text)
        self.arithmetic += [(name, line) for name in names[1 if skip_first else 0:]]

    def _deny(self) -> str | None:
        for ctx in reversed(self.stack):
            if ctx.get("deny"):
                return ctx["deny"]
        return None

    def fail(self, reason: str) -> None:
        raise UnsafeContext(self.line, reason)

    def run(self) -> list[Slot]:
        while self.i < len(self.text):
            top = self.stack[-1]
            getattr(self, "_" + top["kind"])(top)
        top = self.stack[-1]
        if top["kind"] == "cmd":
            self._end_command(top)
        if len(self.stack) != 1 or self.pending_heredocs or self.stack[0]["cond"]:
            self.fail("in a script that leaves a quote, $( ), ${ }, [[ or here-document open "
                      "(dagrun cannot tell how bash reads it)")
        changed = True
        while changed:  # a copy of a value holds it too (cmd="echo $repo"; local c=$1)
            changed = False
            for name, sources in self.copies:
                if name not in self.tainted and any(
                        src in self.tainted or src in _POSITIONAL or src.startswith(_VALUE_NAMES) for src in sources):
                    self.tainted.add(name)
                    changed = True
        self.indirect |= {name for name, sources in self.copies if name in LIBPQ_NAME_VARIABLES and any(
            src in self.tainted or src in _POSITIONAL or src.startswith(_VALUE_NAMES) for src in sources)}
        for name in sorted((self.tainted & self.indirect & LIBPQ_NAME_VARIABLES) - self.given):
            raise UnsafeContext(self._assigned_at.get(name, 1),
                                f"through ${name}: a value reaches it other than as the whole of a {name}={{{{ x }}}} "
                                "word, where dagrun checks it is a plain name (libpq programs read one holding = as "
                                "a connection string)")
        # Values reach a script as {{ }} markers, and through the variables dagrun (or its env) gives it.
        holds_values = bool(self.slots or self.given or _CONFIG_REFERENCE.search(self.text))
        # What dagrun cannot follow, refused once a value may reach the script (the first found, in this order).
        doubts = (
            (self.dynamic_command, "in a script where a command's output is the command to run ($(...) as the "
                                   "command): dagrun cannot tell what runs"),
            (self.env_database, "in a script where vacuumdb, reindexdb, clusterdb, pgbench or pg_amcheck is given "
                                "no database: they take $PGDATABASE (or $PGUSER) as a connection string, and a value "
                                "may reach those in more ways than dagrun can follow: name the database in the "
                                "template (-d NAME, or --all)"),
            (self.code_from_output, "in a script that runs a command's output as code (eval \"$(...)\", source "
                                    "<(...)): dagrun cannot tell which values reach it"),
            (self.environment_to_shell, "in a script with inline code (awk, perl, python...) that reads the "
                                        "environment and hands text to a shell (system(), popen, a pipe to a "
                                        "command): a value exported to it would be shell code there; pass it as "
                                        "an argument of that code and run programs with an argument list"),
            (self.unknown_name, "in a script that gives a value to a variable an expansion names (printf -v \"$n\", "
                                "read \"$n\", declare \"$n=...\"): dagrun cannot tell which variable that is (PATH, "
                                "GIT_SSH_COMMAND...)"),
            (self.unknown_nameref, "in a script with a nameref (declare -n) whose target is not written in the "
                                   "declaration: dagrun cannot tell which variable a value given to it reaches"),
            (self.piped_into, "in a script that pipes into a program running what it reads (sh, python3 -, "
                              "xargs...): dagrun cannot tell which values reach it"),
        )
        for line, reason in doubts:
            if line is not None and holds_values:
                raise UnsafeContext(line, reason)
        if ("expand_aliases" in self.text or "posix" in self.text) and holds_values:  # (set -o posix: aliases on)
            self.fail("in a script that expands aliases (dagrun cannot tell what a command runs)")
        for quoted in _BACKTICKS.finditer(_without_single_quoted(self.text)):  # `$x`: a command substitution
            self._inner(quoted.group(1))
        for line, holds_value, names in self.opaque_arguments:
            if holds_value or any(n in self.tainted or n in _POSITIONAL or n.startswith(_VALUE_NAMES) for n in names):
                raise UnsafeContext(line, "as an argument of sh -c code held in a variable: dagrun cannot tell what "
                                          "that code does with it")
        if self.option_from_expansion is not None and holds_values:
            raise UnsafeContext(self.option_from_expansion, OPTION_FROM_EXPANSION)
        for name in sorted(self.tainted - self.given):  # (PS4="$x", printf -v GIT_SSH_COMMAND: a copy of a value)
            if runs_as_code(name):
                raise UnsafeContext(self._assigned_at.get(name, 1),
                                    f"through ${name}: as the value of {name}, which bash or the programs it starts "
                                    "run as code or load code from (USER, PWD and the like are trusted to hold no "
                                    "option), it may hold a value")
        for name, line in self.code:
            if name in self.tainted or name in _POSITIONAL or name.startswith(_VALUE_NAMES) or name in _FILLED \
                    or name.startswith("!") or name in self.outputs:
                what = "an argument of the function or script" if name in _POSITIONAL else "a value"
                raise UnsafeContext(line, f"through ${name}, which may hold {what}, as a command or in code a "
                                          "command runs (eval, trap, sh -c, su -c, ssh...)")
        for name, line in self.arithmetic:  # (a function defined above may run after the assignment)
            if name in self.tainted or name.startswith(_VALUE_NAMES):
                raise UnsafeContext(line, f"through ${name} in arithmetic: {name} holds a value, and bash evaluates "
                                          "a[$(cmd)] in what arithmetic reads; compare it with [ ] or test")
        for name, line in self.declared:  # an array made anywhere in the script (a function may run first)
            if name in self.array_names:
                raise UnsafeContext(line, f"as the value of {name}, an array: declare reads a value given to an "
                                          "array as a (...) list, which is code; assign it plainly (name=...)")
        return self.slots

    def _advance(self, n: int = 1) -> str:
        chunk = self.text[self.i:self.i + n]
        self.line += chunk.count("\n")
        self.i += n
        return chunk

    def _marker(self) -> int:
        m = _MARKER.match(self.text, self.i)
        if m is None:
            self.fail("next to a stray \\x01 character")
        self.i = m.end()  # type: ignore[union-attr]
        return int(m.group(1))  # type: ignore[union-attr]

    def _cmd_ctx(self) -> dict[str, Any]:
        for ctx in reversed(self.stack):
            if ctx["kind"] == "cmd":
                return ctx
        raise AssertionError("no command context")

    # -- words and commands -----------------------------------------------------

    @staticmethod
    def _kind(cmd: dict[str, Any]) -> str | None:
        """``runner``, ``interpreter``, ``scripted`` or None, for the current command."""
        name = cmd["command"]
        if name is None:
            return None
        base = name.rsplit("/", 1)[-1]
        if base in RUNNERS:
            return "runner"
        if base in INTERPRETERS or _PYTHON_LIKE.match(base):
            return "interpreter"
        if base in SCRIPTED:
            return "scripted"
        return None

    @staticmethod
    def _program(cmd: dict[str, Any], permutes: bool = False) -> tuple[bool, bool, bool]:
        """For an interpreter's command so far: is its program fixed (a file
        operand or inline code given)? is the next word inline code? does
        the program come from stdin? ``permutes``: the tool reads options
        after its operands too (GNU sed, awk, jq), so a later -e is code."""
        args = cmd["words"][cmd["command_index"] + 1:]
        base = cmd["command"].rsplit("/", 1)[-1]
        if base == "busybox" and args:  # busybox sh -c ...: the applet is the program
            base, args = args[0].rsplit("/", 1)[-1], args[1:]
        if base in _SHELL_NAMES:
            return _shell_program(args)
        code_flags, glued, with_argument = _options_of(base)
        fixed = expect_code = stdin = skip = False
        # An option dagrun does not know may take the next word (node --title x -e CODE, python3
        # --check-hash-based-pycs default -c CODE): that word fixes no program, so a -c or -e after
        # it is still code (helper-70). Python's short options are all known.
        maybe_argument = (lambda w: w.startswith("-") and w != "-" and "=" not in w and w not in _FLAG_ONLY) \
            if base.startswith(("node", "deno", "bun")) else (
            lambda w: w.startswith("--") and "=" not in w and w not in _FLAG_ONLY)
        after_unknown = False
        for word in args:
            if skip:  # the argument of the option before it (bash -o pipefail, python3 -W ignore)
                skip = False
                continue
            if expect_code:
                fixed, expect_code = True, False
                stdin = stdin or _is_stdin_file(word)  # awk -f /dev/stdin: the program is its input
            elif word == "--":
                break
            elif fixed and not permutes:
                break
            elif fixed and word not in code_flags and not (glued and word.startswith(glued) and len(word) > 2):
                continue
            elif word in code_flags:
                expect_code = True
            elif re.fullmatch(r"-[A-Za-z0-9]+", word) and len(word) > 2 and word[-1] in {
                    f[1] for f in code_flags if len(f) == 2}:
                expect_code = True  # a bundle ending in the code flag: node -pe CODE, perl -le CODE (helper-71)
            elif glued and word.startswith(glued) and len(word) > 2 and not word.startswith("--"):
                fixed = True
            elif _is_stdin_file(word) and (word != "-" or not permutes):
                stdin = fixed = True  # the program is its input; later words are its arguments
            elif word in with_argument:
                skip = True
            elif word.startswith("-") or word.startswith("+"):
                after_unknown = maybe_argument(word)
                continue  # an option of the interpreter
            else:
                fixed = True  # the script file (or an option's argument: later code flags still count)
                permutes = permutes or after_unknown
            after_unknown = False
        return fixed, expect_code, stdin

    def _command_deny(self, cmd: dict[str, Any], *, stdin: bool = False) -> str | None:
        """Why no value may appear at the current point of the current command
        (``stdin``: in its input, a here-document or here-string), if so."""
        if cmd["command"] is None:
            return None
        if not cmd["command_literal"]:
            return "in a command whose name is not a plain word (dagrun cannot tell what it does with a value)"
        kind = self._kind(cmd)
        name = cmd["command"].rsplit("/", 1)[-1]
        if kind in ("interpreter", "scripted") and cmd["words"][-1:] and cmd["command_index"] < len(cmd["words"]) - 1 \
                and cmd["words"][-1] in _DATA_OPTIONS.get(name, ()) and not stdin:
            return None  # the argument of an option that takes data (awk -v n=..., psql -v name=...)
        if name == "psql" and not stdin:
            return ("as an argument of psql other than that of -U, -h, -p or -v: libpq reads its database name "
                    "(-d, or its first operand) as a whole connection string when it holds '=' or a URL "
                    "(dbname=x user=postgres): give a database name in $PGDATABASE (PGDATABASE={{ ... }} psql ...), "
                    "where dagrun takes only a plain name")
        if stdin and name == "tar" and _tar_reads_names_as_options(cmd["raws"][cmd["command_index"] + 1:]):
            return ("in the input of tar -T (--files-from), which reads a line beginning with '-' as an option "
                    "(-C/etc): give tar --verbatim-files-from before -T")
        option = _option_reads_stdin(name, cmd["raws"][cmd["command_index"] + 1:]) if stdin else None
        if option is not None:
            return (f"in the input of {name}, which its {option} - (or /dev/stdin) reads as settings or commands: "
                    "keep values out of a program's settings "
                    "(written to a file, a value is settings there too)")
        if name in _READS_INPUT_AS_DATA and _program_runs_commands(name, cmd["raws"][cmd["command_index"] + 1:]):
            return (f"in a command of {name} whose program runs commands (awk's system(), getline and print to a "
                    "command; sed's e): keep values out of it")
        subcommand = _code_subcommand(name, kind, cmd["raws"][cmd["command_index"] + 1:])
        if subcommand is not None:
            return (f"in what {subcommand} runs (it runs code it is given, or its input: a project's shell, a "
                    "database console, a package's command): pass the value as data (a file, a variable, an "
                    "argument of a script file)")
        installs = _code_subcommand(name, kind, cmd["raws"][cmd["command_index"] + 1:], _INSTALLERS,
                                    _ANY_INSTALLER_SUBCOMMAND)
        if installs is not None:
            return (f"in a command of {installs}, which installs what its arguments name (a package's build, "
                    "install scripts or plugins run as the step's account, root's for a workspace without a Linux "
                    "user): install only what the template's author wrote, or use the install_pip_requirements "
                    "and install_system_packages actions, which check what they are given")
        if name in _LIBPQ_VALUE_OPTIONS and _libpq_database_name(
                name, cmd["words"][cmd["command_index"] + 1:], self._so_far(cmd), cmd["raws"][cmd["command_index"] + 1:],
                self.text[cmd.get("raw_start", self.i):self.i]):
            return (f"in {name}'s arguments other than those of "
                    f"{', '.join(sorted(o for o in _LIBPQ_VALUE_OPTIONS[name] if o.startswith('--')))}"
                    + (" or a plain operand" if name in _LIBPQ_OPERANDS else "")
                    + ": libpq reads a database name holding '=' or a URL as a whole connection string (dbname=x "
                    "user=postgres), and its programs spell one many ways: give the database in $PGDATABASE "
                    f"(PGDATABASE={{{{ ... }}}} {name} ...), where dagrun takes only a plain name")
        if kind == "runner":
            return (f"in a command of {name}, which runs its arguments (or another command) as code; nor may "
                    "a variable that holds a value: give the value to a program that takes it as data")
        if kind in ("interpreter", "scripted"):
            fixed, expect_code, from_stdin = self._program(cmd, permutes=kind == "scripted")
            word = self._so_far(cmd)
            glued = _options_of(name)[1]
            if expect_code or (glued and word.startswith(glued) and not word.startswith("--")):
                return f"in the code {name} runs (-c / -e): pass it as an argument of that code instead"
            if stdin:
                if (kind == "interpreter" and not fixed) or from_stdin:
                    return f"in the input of {name}, which runs its input as a program: write the value to a file"
                return None
            if not fixed:
                return (f"as (or before) the program {name} runs: a value can be an argument of a script, "
                        "never the script")
        return None

    def _end_word(self, ctx: dict[str, Any]) -> None:
        word, markers = ctx["word"], ctx["word_markers"]
        if not word and not markers:
            return
        holds_value = ctx.pop("word_tainted", False)
        if ctx["redirect"]:  # a redirection's target is not an argument of the command
            if ctx["redirect"] == "<<<":  # (what a here-string expands is the input: a program's, perhaps)
                raw = self.text[ctx.get("raw_start", self.i):self.i]
                ctx.setdefault("herestring_names", []).extend(_EXPANSION.findall(_without_single_quoted(raw)))
                if "$(" in _without_single_quoted(raw) or "`" in _without_single_quoted(raw):
                    ctx["herestring_output"] = True
            ctx.update(word="", word_markers=[], word_literal=True, redirect=False)
            return
        raw = self.text[ctx.get("raw_start", self.i):self.i]
        if markers and not ctx["dashdash"]:
            self._mark_after_dashes(raw)
        plain, dynamic = _as_read(raw)
        self._track_values(ctx, word, holds_value, raw, plain)
        index = len(ctx["words"])
        # Compared with options and names as bash reads it ('-c' is -c); one that expands keeps its form
        stored = word if dynamic else plain
        if ctx["command"] == "function" and index == ctx["command_index"] + 1 and not ctx["command_start"] \
                and ctx["depth"] == 0 and not self.compound and len(self.stack) == 1 and not shutil.which(stored):
            self.defined.add(stored)  # function NAME { ... }
        ctx["words"].append(stored)
        ctx["raws"].append(raw)  # (as written: "$k" is "xx" above)
        if markers:
            ctx["marker_words"].add(index)
        if ctx["command_start"] and not _ASSIGNMENT.match(word) and ("$(" in word or "`" in word):
            self.dynamic_command = self.dynamic_command or self.line
        if ctx["command_start"] and word == "coproc":  # what is written to it, it may run
            self.piped_into = self.piped_into or self.line
        if ctx["command_start"] and not _ASSIGNMENT.match(word):  # NAME=value words come before the command
            if word in _COMPOUND_STARTS:
                self.compound.append(False)
                self.compound_fed.append(ctx.get("fed") is not None)  # (echo v | while ...; do bash; done)
            elif word in _COMPOUND_ENDS and self.compound:  # while read l; do ...; done <<< "$x": fine if
                reads = self.compound.pop()  # nothing in it runs its input
                if self.compound_fed.pop() and reads:
                    self.piped_into = self.piped_into or self.line
                ctx["compound_reads"] = reads
                if reads and self.compound:
                    self.compound[-1] = True
            ctx["command_start"] = False
            ctx["command"] = _known_name(word)
            ctx["command_index"] = index
            ctx["command_literal"] = not markers and ctx["word_literal"] and (
                bool(_LITERAL_NAME.match(word)) or word in ("[", "[["))
            if word == "[[":
                ctx["cond"] = True
            if word == "case":
                ctx["case"] += 1  # its patterns end with ')' that must not close a $( )
            if word in _CONTROL:
                ctx["command_start"] = True
                ctx["command"] = None
        elif ctx["command"] == "for" and ctx["for_name"] is None:
            ctx["for_name"] = word
        elif stored == "--" and ctx["command"] is not None:
            ctx["dashdash"] = True
        elif ctx["command"] in DECLARE_BUILTINS and stored.startswith("-") and set(stored[1:]) & {"i", "n", "a", "A"}:
            ctx["integer_declare"] = ctx["integer_declare"] or bool(set(stored[1:]) & {"i", "n"})
            ctx["array_declare"] = ctx["array_declare"] or bool(set(stored[1:]) & {"a", "A"})
            ctx["nameref_declare"] = ctx.get("nameref_declare") or "n" in stored[1:]
        elif (ctx["integer_declare"] or ctx["array_declare"]) and not markers:
            name = plain.split("=", 1)[0].split("[", 1)[0].rstrip("+")
            (self.integer_names if ctx["integer_declare"] else self.array_names).add(name)
            if ctx["integer_declare"] and ctx["array_declare"]:
                self.array_names.add(name)
            if ctx.get("nameref_declare"):  # declare -n ref=NAME: what ref is given, NAME is
                target = plain.split("=", 1)[1].split("[", 1)[0] if "=" in plain else ""
                if target:
                    self.copies += [(target, [name]), (name, [target])]
                if dynamic or not target:  # (a target a value, or a later assignment, chooses)
                    self.unknown_nameref = self.unknown_nameref or self.line
        elif ctx["command"] in ("read", "mapfile", "readarray") and not markers and not stored.startswith("-"):
            self.array_names.add(stored)  # (read -a NAME, mapfile NAME: arrays; a plain read's names too, to be safe)
        if word == "esac" and ctx["case"] and ctx["command"] == "esac" and ctx["command_index"] == index:
            ctx["case"] -= 1  # (the reserved word: at a command's start, not an argument like echo esac)
        if ctx["cond"]:
            self._check_condition(ctx)
            if word == "]]":
                ctx["cond"] = False
        ctx.update(word="", word_markers=[], word_literal=True)
        if ctx["command"] == "function" and index == ctx["command_index"] + 1 \
                and not re.match(r"(?:[ \t]|\\\n)*\(\s*\)", self.text[self.i:]):
            # function NAME BODY: the body is a compound command ({ }, while, if...), past blanks and
            # line continuations: its commands are commands (helper-71, helper-74). (NAME () is read at "(".)
            self._end_command(ctx)

    def _mark_after_dashes(self, raw: str) -> None:
        """Slots of the word ``raw`` with only '-' or '+' before them (past
        quotes and what may be empty): ``-{{ n }}`` makes an option of the
        value unless it is a number (tail -{{ n }}: helper-65)."""
        for m in _MARKER.finditer(raw):
            before = _MAY_BE_EMPTY.sub("", _MARKER.sub("", raw[:m.start()]).replace("$'", "").replace('$"', ""))
            before = before.replace("'", "").replace('"', "")
            # (-{{ n }}, or a bundle's letters: tar -c{{ v }}f; a $'...' before it may spell dashes:
            # $'\x2d\x2d'{{ v }}, helper-70)
            if re.fullmatch(r"[-+]+[A-Za-z0-9]*", before) or "$'" in raw[:m.start()]:
                self.slots = [_replace(s, after_dashes=True) if s.index == int(m.group(1)) else s for s in self.slots]

    def _track_values(self, ctx: dict[str, Any], word: str, holds_value: bool, raw: str, read_as: str) -> None:
        """Which names come to hold a value, and which names arithmetic reads
        (``read_as``: the word as bash reads it, up to an expansion)."""
        command = None if ctx["command_start"] else ctx["command"]
        # (quoted, NAME=... is an assignment to declare and export, not at a command's start)
        assigned_text = read_as if command in DECLARE_BUILTINS else word
        assignment = _ASSIGNMENT.match(assigned_text)
        if assignment and runs_as_code(assignment.group().rstrip("+=").split("[", 1)[0]):
            if holds_value:  # (the author's own PS4 or GIT_SSH_COMMAND is theirs)
                self.fail(f"as the value of {assignment.group().rstrip('+=')}, which bash or the programs it "
                          "starts run as code or load code from (or, for PATH, find commands in; USER, PWD and "
                          "the like are trusted to hold no option)")
        base = (command or "").replace("\\", "").rsplit("/", 1)[-1]
        expanded = _EXPANSION.findall(_without_single_quoted(raw))
        ctx.setdefault("expanded", []).extend(expanded)  # (what the command may feed to the next by a pipe)
        runs_it = not assignment and command is not None and self._command_deny(ctx) is not None  # ($e "$x" too)
        if runs_it and ("$(" in raw or "`" in raw or "<(" in raw
                        or raw.strip("'\"").startswith(("/dev/fd/", "/proc/self/fd/", "/dev/stdin"))):
            self.code_from_output = self.code_from_output or self.line
        if expanded and not assignment and (command is None or runs_it):
            self.code += [(name, self.line) for name in expanded]  # the command, or code it runs
        elif command is not None and self._command_option(ctx, word):  # (git runs it with sh: '$x' too)
            self.code += [(name, self.line) for name in _EXPANSION.findall(raw)]
        if base == "git" and expanded and self._git_setting_name(ctx, raw):
            self.code += [(name, self.line) for name in expanded]  # git config "$k" v: a value names the setting
        if base == "git" and (word.startswith("--config-env=") or ctx["words"][-1:] == ["--config-env"]):
            key, _, variable = word.removeprefix("--config-env=").partition("=")
            if _GIT_CODE_KEY.match(key):
                self.code.append((variable, self.line))  # the variable's value is the setting
        # (a function that reads options with getopts reads them from "$@", unseen; one unset is no more)
        functions = self.defined if "getopts" not in self.text and "unset" not in self.text else set()
        bare = (command or "").replace("\\", "")
        if "/" in bare:  # (./test, tools/exit, /usr/bin/sort: a program, whatever its last name)
            bare = "/" + bare
        if command is not None and not assignment and not ctx["dashdash"] and _option_from_expansion(
                bare, raw, functions, ctx["words"][ctx["command_index"] + 1:]):
            self.option_from_expansion = self.option_from_expansion or self.line
        if bare in ("[", "test") and command is not None:  # [ "$A" "$B" ]: a quoted A may be the operator -v
            previous = ctx["raws"][ctx["command_index"] + 1:]
            if previous and _LEADING_EXPANSION.match(_EMPTY_START.sub("", previous[-1])) and read_as not in _TEST_BINARY \
                    and (ctx["words"][ctx["command_index"] + 1:][-2:-1] or [None])[0] in (None, "!", "(", "-a", "-o"):
                self.evaluates = True
        if command is not None:
            written = raw.replace('"', "").replace("'", "").replace("\\", "")  # the word as bash reads it
            dynamic = "$" in written or "`" in written  # what it is, bash decides at run time
            option = written.startswith("-") and not dynamic
            shell_code = base in _SHELL_NAMES and ctx["command_literal"] and self._program(ctx)[1]  # -c, -ec
            if (shell_code or runs_it) and "$'" in raw:
                self.fail(f"in a script whose code for {base} is written $'...' (dagrun cannot read it as bash "
                          "does): write it in single quotes")
            if ctx.get("opaque_code") and (holds_value or expanded):  # an argument of code dagrun cannot see
                self.opaque_arguments.append((ctx["opaque_code"], holds_value, expanded))
            if shell_code and any(c in _without_single_quoted(raw) for c in "$`"):  # bash -c "$c" _ {{ v }}:
                ctx["opaque_code"] = self.line  # the code is a variable's, unseen: its $1... hold the arguments
            elif shell_code:
                if self._inner(written, arguments=True):
                    ctx["code_reads_input"] = True  # bash -c 'bash' <<< ...: its code runs its input
            elif runs_it and "'" in raw and dynamic and (base in _SHELL_NAMES or self._kind(ctx) not in (
                    "interpreter", "scripted")):  # eval '$x', trap '$f' EXIT: expanded where it runs
                self._inner(written)  # (not awk '{print $1}' nor perl -e '$x': their $ is not bash's)
            elif "'" in raw and self._kind(ctx) in ("interpreter", "scripted") and runs_it:
                # Another language's code: its $NAME is not bash's, but code that hands text to a shell
                # (awk's system("$X"), sed '1e $X', os.system("$X")) has that shell expand an exported X.
                # ($1... there are that shell's own arguments: none.)
                self.code += [(n, self.line) for n in _EXPANSION.findall(written) if not n[:1].isdigit()
                              and n not in ("*", "@", "_")]
            if self._kind(ctx) == "interpreter" and base not in _SHELL_NAMES:
                self._environment_to_shell(written)
            elif base in ("awk", "gawk", "mawk", "nawk") and "ENVIRON" in written \
                    and _AWK_RUNS_COMMANDS.search(written):
                self.environment_to_shell = self.environment_to_shell or self.line  # (sed and jq start no shell
                # from the environment: sed's e with $X is a code use above; sed 's|/usr/bin/env|...|' is fine)
            if dynamic and _names_a_variable(base, written, ctx["words"][ctx["command_index"] + 1:]):
                self.unknown_name = self.unknown_name or self.line
            if "[" in written and (base in NAME_BUILTINS or ctx["words"][-1:] in (["-v"], ["-R"], ["-p"])):
                self.evaluates = True  # unset 'a[i]', declare "a[i]=x", printf -v 'a[i]': the subscript is arithmetic
            if base == "let" or (
                    # names (their subscripts are arithmetic) given by a variable
                    base in ("read", "mapfile", "readarray", "unset", "getopts", "wait", "builtin", "command")
                    and dynamic) or (base in ("mapfile", "readarray") and written.startswith("-C")) or (
                    base in DECLARE_BUILTINS and (dynamic or option and set(written[1:]) & set("inaA"))) or (
                    base in ("printf", "test", "[", "[[") and written.startswith(("-v", "-R"))) or (
                    base == "printf" and dynamic and len(ctx["words"]) == ctx["command_index"] + 1):
                self.evaluates = True
        if command == "getopts":
            self.tainted.add("OPTARG")
        elif command == "printf" and ctx["words"][-1:] == ["-v"] and not read_as.startswith("-"):
            self.tainted.add(read_as)  # printf -v NAME: NAME holds what printf made of its arguments
            self.indirect.add(read_as)
        if assignment and (command is None or command in DECLARE_BUILTINS):
            name = assignment.group().rstrip("+=").split("[", 1)[0]
            self.copies.append((name, expanded))
            self._assigned_at.setdefault(name, self.line)
            if "$(" in raw or "`" in raw:
                self.outputs.add(name)
            if holds_value:
                self.tainted.add(name)
                if expanded or "$(" in raw or "`" in raw:
                    self.indirect.add(name)
            elif name in self.integer_names or ctx["integer_declare"]:  # x=$v: x's value is evaluated
                self._reads(assigned_text[assignment.end():], self.line)
                if "$" in raw or "`" in raw:
                    self.evaluates = True  # RANDOM=$1: whatever it holds is evaluated
        if command == "for" and ctx["for_name"] and word != ctx["for_name"]:
            if holds_value or ctx["for_name"] in self.integer_names:  # (declare -n r; for r in x: r is x)
                self.tainted.add(ctx["for_name"])
                self.indirect.add(ctx["for_name"])
            self.copies.append((ctx["for_name"], expanded))  # for r in $repos: r holds what repos held
        if command in ("read", "mapfile", "readarray") and not read_as.startswith("-"):
            self.tainted.add(read_as)  # what it reads may be anything
            self.indirect.add(read_as)
        if command == "let":
            self._reads(word, self.line)

    def _inner(self, code: str, arguments: bool = False) -> bool:
        """Code a command runs (sh -c CODE, eval, trap, a shell's program in
        a here-document): where it evaluates text, this script does; what
        holds a value here holds it there, copies included, and with
        ``arguments`` (sh -c, bash -s) so do $0, $1... and $@. A name that
        may hold a value and is run as code there is refused here."""
        inner = _Lexer(code)
        inner.tainted |= self.tainted | self.outputs
        if arguments:
            inner.tainted |= _POSITIONAL | {"0", "BASH_ARGV", "BASH_ARGV0"}
        try:
            inner.run()
        except UnsafeContext as exc:
            if exc.reason.startswith(("through $", "as the value of")):  # a value's use, not the lexer's doubt
                raise UnsafeContext(self.line, exc.reason) from None
        self.evaluates = self.evaluates or inner.evaluates
        self.code += [(name, self.line) for name, _ in inner.code]
        self.arithmetic += [(name, self.line) for name, _ in inner.arithmetic]
        # eval 'y=$x'; $y: what it assigns is this shell's (for sh -c, a child's: counted all the same)
        self.copies += inner.copies
        self.tainted |= inner.tainted - _POSITIONAL - {"0", "BASH_ARGV", "BASH_ARGV0"}
        self.outputs |= inner.outputs
        self.opaque_arguments += inner.opaque_arguments
        return inner.runs_input or inner.piped_into is not None

    def _environment_to_shell(self, code: str) -> None:
        """Inline code of another language (or any word of its command: a
        quoted part may be code) that reads the environment and may hand
        text to a shell: a value exported to it would be shell code there."""
        if _READS_ENVIRONMENT.search(code) and _HANDS_TO_A_SHELL.search(code):
            self.environment_to_shell = self.environment_to_shell or self.line

    @staticmethod
    def _command_option(cmd: dict[str, Any], word: str, before_value: bool = False) -> str | None:
        """The option (or word) of the current command whose argument it runs
        as a command, if ``word`` (as written so far) is or follows one: long
        options abbreviated or with =, short ones bundled (rsync -avze)."""
        name = (cmd["command"] or "").rsplit("/", 1)[-1]
        options = _COMMAND_OPTIONS.get(name)
        if not options:
            return None
        args = cmd["words"][cmd["command_index"] + 1:]
        previous = args[-1] if args else None
        if name == "git":
            key_held = len(cmd["words"]) - 1 in cmd["marker_words"] or any(  # the word before: a setting's name?
                c in (cmd["raws"][-1] if cmd["raws"] else "") for c in "$`")  # (held, or named by a variable)
            found = _Lexer._git_setting(args, previous, word, key_held)
            if found is not None:
                return found
            def bundle_with_u(w: str | None, last: bool) -> bool:  # -u, -qu, -u'cmd', -quCMD
                return bool(w) and w.startswith("-") and not w.startswith("--") and "u" in w[1:] and (
                    not last or w.endswith("u"))
            if {"clone", "ls-remote"} & set(args) and (  # (their -u is --upload-pack; fetch's is another)
                    bundle_with_u(previous, True) or bundle_with_u(word, before_value)
                    or word.startswith("-") and not word.startswith("--") and "u" in word[1:-1]):
                return "-u (--upload-pack)"
            for after in ("foreach", "run"):  # git submodule foreach CMD..., git bisect run CMD...
                if after in args and ("submodule" in args if after == "foreach" else "bisect" in args):
                    return f"{'submodule' if after == 'foreach' else 'bisect'} {after}"
        for candidate, glued in ((previous, False), (word, True)):
            if not candidate or not candidate.startswith("-") or candidate == "--":
                continue
            if candidate.startswith("--"):
                given, equals, _ = candidate.partition("=")
                if glued != bool(equals) or len(given) < 4:
                    continue
                for option in options:  # (getopt takes any unambiguous prefix: --to-comm=)
                    if option.startswith("--") and option.startswith(given):
                        return option
            else:
                letters = candidate[1:]
                for option in options:
                    if len(option) == 2 and option[1] in letters and (
                            not glued or before_value or letters.index(option[1]) < len(letters) - 1):
                        return option  # -avze CMD, -xvICMD, -S{{ v }} (a bundle: any letter of it)
                    if len(option) > 2 and not option.startswith("--") and candidate.startswith(option) and (
                            glued or candidate == option):
                        return option  # zip -TT
        return None

    @staticmethod
    def _git_setting_name(cmd: dict[str, Any], word: str) -> bool:
        """Is ``word`` (as written) the name of a git setting: git config
        NAME ..., or the part before = after -c / --config(-env)?"""
        args = cmd["words"][cmd["command_index"] + 1:]
        previous = args[-1] if args else None
        if previous in ("-c", "--config", "--config-env") or word.startswith(("-c", "--config")):
            return "$" in word.split("=", 1)[0] or "`" in word.split("=", 1)[0]
        if "config" in args:
            after = args[args.index("config") + 1:]
            return not word.startswith("-") and all(w.startswith("-") for w in after)
        return False

    @staticmethod
    def _before_subcommand(args: list[str]) -> bool:
        """Is the last of ``args`` still among git's own options (git -C DIR
        -c K=V ...), before its subcommand (git commit -c is another -c)?"""
        skip = False
        for word in args[:-1]:
            if skip:
                skip = False
            elif word in ("-C", "-c", "--git-dir", "--work-tree", "--namespace", "--config-env"):
                skip = True
            elif not word.startswith("-"):
                return False
        return True

    @staticmethod
    def _git_setting(args: list[str], previous: str | None, word: str, key_held: bool = False) -> str | None:
        """git -c KEY=VALUE (git's own, or clone's), --config(-env)=KEY=...,
        git config KEY VALUE: a setting git runs as a command (or a name a
        value chooses)."""
        if previous in ("-c", "--config", "--config-env") and (
                previous != "-c" or "clone" in args or _Lexer._before_subcommand(args)):
            setting = word
        elif word.startswith("-c") and len(word) > 2 and ("clone" in args or _Lexer._before_subcommand([*args, word])):
            setting = word[2:]  # git clone -ccore.sshCommand=... (glued)
        elif word.startswith(("--config=", "--config-env=")):
            setting = word.split("=", 1)[1]
        elif "config" in args and previous is not None and not previous.startswith("-") and previous != "config" \
                and args.index("config") < len(args) - 1:
            if key_held:
                return "a setting's name"
            setting = f"{previous}={word}"
        else:
            return None
        key, equals, _ = setting.partition("=")
        if not equals:
            return "a setting's name"  # the value is (in) the name
        return f"setting {key}" if _GIT_CODE_KEY.match(key) else None

    def _so_far(self, cmd: dict[str, Any]) -> str:
        """The word being read, as bash reads it up to here ("--rsh=ssh -p is --rsh=ssh -p)."""
        return _as_read(self.text[cmd.get("raw_start", self.i):self.i])[0] if cmd["word"] else ""

    def _check_use(self, cmd: dict[str, Any], index: int) -> None:
        """Refuse a value where the command would run it or read it as a name."""
        deny = self._deny() or self._command_deny(cmd, stdin=cmd["redirect"] == "<<<")
        if deny:
            self.fail(deny)
        option = None if cmd["redirect"] or cmd["command_start"] else self._command_option(cmd, self._so_far(cmd),
                                                                                             True)
        if option is not None:
            self.fail(f"in the argument of {cmd['command']} {option}, which it runs as a command (or reads "
                      "as settings that name one)")
        if not cmd["redirect"] and not cmd["command_start"] and _curl_reads_a_file_there(
                cmd, self.text[cmd.get("raw_start", self.i):self.i] if cmd["word"] else ""):
            self.fail("at the start of curl's data, header or form value, where @FILE (or <FILE) reads a file "
                      "as this step's account and sends it: put the value after literal text, or use --data-raw "
                      "or --form-string, which read no file")
        if cmd["redirect"] == "<<<":
            cmd["herestring_values"] = True  # (checked again when the command's name is known)
        if cmd["redirect"]:
            return
        word = cmd["word"]
        if cmd["command_start"] and not _ASSIGNMENT.match(word):
            self.fail("as the command itself (a value cannot choose what runs)")
        command = cmd["command"]
        previous = cmd["words"][-1] if cmd["words"] else None
        assignment = _ASSIGNMENT.match(word)
        if command in NAME_BUILTINS and not (command in DECLARE_BUILTINS and assignment):
            self.fail(f"in the arguments of {command}: they are variable names, whose subscripts bash evaluates")
        if command in DECLARE_BUILTINS and cmd["integer_declare"]:
            self.fail(f"as the value of an integer or nameref variable ({command} -i / -n)")
        if command in DECLARE_BUILTINS and cmd["array_declare"]:
            self.fail(f"as the value of an array ({command} -a / -A reads it as a (...) list, which is code)")
        if command == "printf" and (previous == "-v" or word.startswith("-v")):
            self.fail("as the variable name of printf -v")
        if command in ("[", "test", "[[") and (previous in ("-v", "-R") or word[:2] in ("-v", "-R")):
            self.fail(f"as the variable name of {command} -v")
        name = assignment.group().rstrip("+=").split("[", 1)[0] if assignment else None
        if name is not None and name in self.integer_names:
            self.fail(f"as the value of {name}, declared -i or -n, or one of bash's own numbers (arithmetic)")
        if name is not None and command in DECLARE_BUILTINS:
            self.declared.append((name, self.line))
        if command == "for" and cmd["for_name"] in self.integer_names:
            self.fail(f"in the list of a for loop over {cmd['for_name']}, declared -i (arithmetic)")
        if cmd["cond"] and previous in _ARITH_OPS:
            self.evaluates = True
        if cmd["cond"] and previous in _ARITH_OPS and not word:
            self.fail(f"as an operand of {previous} in [[ ]] (bash evaluates it as arithmetic); use [ ] or test")

    def _check_condition(self, ctx: dict[str, Any]) -> None:
        words, marked = ctx["words"], ctx["marker_words"]
        for i, word in enumerate(words):
            if word in _ARITH_OPS and ({i - 1, i + 1} & marked):
                self.fail(f"as an operand of {word} in [[ ]] (bash evaluates it as arithmetic); use [ ] or test")
        if any(word in _ARITH_OPS or word == "-v" or word == "-R" for word in words):
            self.evaluates = True
        if len(words) >= 2 and words[-2] in _ARITH_OPS:  # the operands of -eq and the like, as they end
            self._reads(words[-3] if len(words) >= 3 else "", self.line)
            self._reads(words[-1], self.line)

    def _end_command(self, ctx: dict[str, Any], pipe: bool = False) -> None:
        """``pipe``: the command's output goes to the next one's input."""
        self._end_word(ctx)
        if ctx["cond"]:
            return  # [[ ... ]] goes on over &&, ||, ( and ) until its ]]
        base = (ctx["command"] or "").replace("\\", "").rsplit("/", 1)[-1]
        if base in _ENV_DATABASE_CLIENTS and not _names_its_database(base, ctx["raws"][ctx["command_index"] + 1:]):
            self.env_database = self.env_database or self.line
        name = (ctx["command"] or "").rsplit("/", 1)[-1]
        if ctx["command"] and ctx["command_literal"] and (ctx["marker_words"] or ctx.get("expanded")):
            # (a subcommand after the value: npm --prefix {{ v }} install, manage.py --settings {{ v }} shell)
            args = ctx["raws"][ctx["command_index"] + 1:]
            found = _code_subcommand(name, self._kind(ctx), args, _INSTALLERS, _ANY_INSTALLER_SUBCOMMAND) \
                or _code_subcommand(name, self._kind(ctx), args)
            if found and ctx["marker_words"]:
                self.fail(f"in a command of {found}, which installs what its arguments name or runs code it is "
                          "given (wherever the value stands in it): keep values out of it")
            if found:
                self.code += [(n, self.line) for n in ctx.get("expanded", [])]
        if base in _READS_INPUT_AS_DATA and _program_runs_commands(base, ctx["raws"][ctx["command_index"] + 1:]):
            if ctx["marker_words"]:  # (awk -v name={{ v }} 'BEGIN { system(... name) }': before the program)
                self.fail(f"in a command of {base} whose program runs commands (awk's system(), getline and "
                          "print to a command; sed's e): keep values out of it")
            self.code += [(name, self.line) for name in ctx.get("expanded", [])]
        fed = ctx.get("fed")
        if fed is not None and ctx["command"] is None and not ctx["words"] and not pipe:
            return  # a newline (or a comment) right after "|": the pipeline goes on
        if ctx["command"] == "for" and ctx["for_name"] and "in" not in ctx["words"]:
            self.copies.append((ctx["for_name"], ["@"]))  # for c; do ...: over the arguments
        unseen = ctx.get("input_elsewhere") or (
            (ctx["command"] is None or ctx["command"] in _COMPOUND_ENDS or ctx["command"] in self.functions)
            and ctx.get("compound_reads", True) and (
                ctx.get("herestring_values") or ctx.get("herestring_names") or ctx.get("stdin_substitution")
                or len(self.pending_heredocs) > ctx.get("heredocs_from", 0)))
        if ctx["command"] is not None or unseen:
            # (input given to a group or subshell, { bash; } <<< ..., or on another descriptor, 3<<EOF ...
            # bash <&3: which command reads it, dagrun cannot tell)
            deny = INPUT_ELSEWHERE if unseen or ctx.get("code_reads_input") else self._command_deny(ctx, stdin=True)
            if deny and not unseen and not self.compound:
                self.runs_input = True
            if self.compound and not unseen and (deny or ctx["command"] in self.functions or ctx.get("code_reads_input")):
                self.compound[-1] = True  # the compound around it runs (a program from) its input, or may
            if deny:  # it runs what it reads: here-documents and here-strings given before its name too
                if ctx.get("herestring_values"):
                    self.fail(deny)
                if ctx.get("herestring_output"):  # bash <<< "$(f)": a command's output as code
                    self.code_from_output = self.code_from_output or self.line
                self.code += [(name, self.line) for name in ctx.get("herestring_names", ())]  # bash <<< "$x"
                if ctx.get("stdin_substitution"):  # < <(...) bash
                    self.piped_into = self.piped_into or self.line
                for i in range(ctx.get("heredocs_from", 0), len(self.pending_heredocs)):
                    if self.pending_heredocs[i][3] is None:
                        self.pending_heredocs[i] = (*self.pending_heredocs[i][:3], deny)
            if fed is not None and (deny or self._kind(ctx) == "runner" or ctx["command"] in self.functions):
                # (a group, a loop or another program may have passed values on: any value of the script)
                self.piped_into = self.piped_into or self.line
                if deny and fed["values"]:
                    self.fail(deny)
                self.code += [(name, self.line) for name in fed["expanded"]]
                for i in fed["heredocs"]:  # their bodies come later: refused when they do
                    self.pending_heredocs[i] = (*self.pending_heredocs[i][:3], deny or self.pending_heredocs[i][3])
        feeds = {"values": bool(ctx["marker_words"]), "expanded": ctx.get("expanded", []),
                 "heredocs": list(range(ctx.get("heredocs_from", 0), len(self.pending_heredocs)))} if pipe else None
        ctx.pop("opaque_code", None)
        ctx.update(words=[], raws=[], marker_words=set(), command_start=True, command=None, command_literal=True,
                   dashdash=False, integer_declare=False, array_declare=False, nameref_declare=False, redirect=False,
                   for_name=None,
                   fed=feeds, heredocs_from=len(self.pending_heredocs), expanded=[], herestring_values=False,
                   stdin_substitution=False, herestring_names=[], input_elsewhere=False, compound_reads=True,
                   code_reads_input=False)

    def _word_start(self, ctx: dict[str, Any]) -> tuple[bool, tuple[int, ...]]:
        """Does the current point begin a word (only empty quotes, or values
        that may be empty, before it)? And which values come before it."""
        rest = ctx["word"]
        for empty in ("$''", '$""', "''", '""'):
            rest = rest.replace(empty, "")
        # What may expand to nothing counts as nothing: parameter expansions, command
        # substitutions, brace-expansion punctuation ({,x} yields an empty word first).
        rest = _MAY_BE_EMPTY.sub("", rest).replace(MAY_BE_EMPTY_TEXT, "")
        for empty in ("$''", '$""', "''", '""'):  # ("$BASE": quotes left empty)
            rest = rest.replace(empty, "")
        return not rest, tuple(ctx["word_markers"])

    def _slot(self, index: int, quoted: bool, start: tuple[bool, tuple[int, ...]] | None,
              dashdash: bool = False, assignment: bool = False) -> None:
        word_start, before = start if start is not None else (False, ())
        command_word = ""
        for ctx in self.stack:  # the word being built in each enclosing command holds a value
            if ctx["kind"] == "cmd":
                ctx["word_tainted"] = True
                command_word = ctx["word"]
        named = _ASSIGNMENT.match(command_word)
        self.slots.append(Slot(index, quoted, word_start, self.line, before, options_end=dashdash or start is None,
                               assignment=assignment,
                               assigned=named.group().rstrip("+=").split("[", 1)[0] if named else ""))

    # -- the contexts -----------------------------------------------------------

    def _cmd(self, ctx: dict[str, Any]) -> None:
        text, c = self.text, self.text[self.i]
        if not ctx["word"] and not ctx["word_markers"]:
            ctx["raw_start"] = self.i  # where the next word begins, for its text as written
        if c == OPEN:
            index = self._marker()
            self._check_use(ctx, index)
            self._slot(index, False, self._word_start(ctx), ctx["dashdash"] or ctx["redirect"],
                       assignment=bool(_ASSIGNMENT.match(ctx["word"])))
            ctx["word_markers"].append(index)
            return
        if c == "\\":
            if text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            if text.startswith("\n", self.i + 1):  # line continuation
                self._advance(2)
                return
            ctx["word_literal"] = False
            ctx["word"] += self._advance(2)
            return
        if c == "#" and not ctx["word"] and not ctx["word_markers"]:
            end = text.find("\n", self.i)
            end = len(text) if end < 0 else end
            for m in _MARKER.finditer(text, self.i, end):
                self.slots.append(Slot(int(m.group(1)), True, False, self.line))
            self.i = end
            return
        if c == "'":
            self._push("sq")
            ctx["word_literal"] = False
            ctx["word"] += self._advance()
            return
        if c == '"':
            self._push("dq", word_start=self._word_start(ctx), content=False)
            ctx["word_literal"] = False
            ctx["word"] += self._advance()
            return
        if c == "`":
            self._push("bt", deny="inside backticks (use $( ) instead)")
            ctx["word_literal"] = False
            ctx["word"] += self._advance()
            return
        if c == "$":
            ctx["word_literal"] = False
            if self._dollar(ctx):
                return
        if c == "(" and _ASSIGNMENT.match(ctx["word"]) and ctx["word"].endswith("=") and not ctx["word_markers"]:
            name = ctx["word"].split("=", 1)[0].rstrip("+").split("[", 1)[0]
            self.array_names.add(name)
            integer = name in self.integer_names or ctx["integer_declare"]
            ctx["word"] += self._advance()  # name=( ... ): an array's elements, up to the )
            self._push("array", deny="as an element of an integer array (arithmetic)" if integer else None)
            return
        if c == "(" and not ctx["word_markers"] and text.startswith("((", self.i) and (
                not ctx["word"] or ctx["word"] in _BEFORE_ARITHMETIC):
            self._end_word(ctx)  # for((, if((, while((...: bash reads arithmetic right after the keyword
            self._push("arith", deny="in arithmetic (bash evaluates a[$(cmd)] there)", closer="))", depth=0)
            self._advance(2)
            return
        if c == "[" and ctx["word"] and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ctx["word"]) \
                and not ctx["word_markers"] and not ctx["cond"]:
            self.array_names.add(ctx["word"])  # name[i]=...: an array from here on
            ctx["word"] += self._advance()  # an array subscript: arithmetic, up to its ]
            self._push("arith", deny="in an array subscript (bash evaluates it as arithmetic)", closer="]", depth=0)
            return
        if c in "<>" and text.startswith("(", self.i + 1) and not ctx["cond"]:  # process substitution
            if c == "<" and ctx["redirect"] == "<":
                ctx["stdin_substitution"] = True
            ctx["word_literal"] = False
            ctx["word"] += self._advance(2)
            self._push_cmd(")", ctx)
            if c == ">":  # >(sh): what is written there is its input
                self.stack[-1]["fed"] = {"values": False, "expanded": [], "heredocs": []}
            return
        if c == "<" and text.startswith("<<", self.i) and not text.startswith("<<<", self.i) and not ctx["cond"]:
            if ctx["word"].isdigit() and not ctx["word_markers"]:  # 0<<EOF, 3<<EOF: a descriptor, not an argument
                if ctx["word"] != "0":
                    ctx["input_elsewhere"] = True
                ctx.update(word="", word_literal=True)
            self._heredoc_operator(ctx)
            return
        if (c in "<>" or text.startswith("&>", self.i)) and not ctx["cond"]:  # (&>log, &>>log: redirections)
            if (ctx["word"].isdigit() or _DESCRIPTOR_NAME.fullmatch(ctx["word"])) and not ctx["word_markers"]:
                # 2>file, {fd}>file: a descriptor, not an argument (helper-70)
                if ctx["word"] != "0" and text.startswith("<<<", self.i):
                    ctx["input_elsewhere"] = True
                ctx.update(word="", word_literal=True)
            self._end_word(ctx)
            operator = ""
            while self.i < len(text) and text[self.i] in "<>&|":
                operator += self._advance()
            ctx["redirect"] = operator
            return
        if ctx["cond"] and (c in "()<>" or text.startswith(("&&", "||"), self.i)):
            self._end_word(ctx)  # operators of [[ ]]: words of the condition, not separators
            ctx["words"].append(self._advance(2 if text.startswith(("&&", "||"), self.i) else 1))
            return
        if c == "(" and ctx["word"] in ("@", "!", "+", "?", "*") and not ctx["command_start"] and not ctx["dashdash"]:
            # an extglob pattern begins the argument (tar cf o.tar !(*.tar)): file names, perhaps options
            self.option_from_expansion = self.option_from_expansion or self.line
        if c == "(":
            self._end_word(ctx)
            args = ctx["words"][ctx["command_index"]:]
            if re.match(r"\(\s*\)", text[self.i:]) and (
                    len(args) == 1 and not ctx["command_start"] or len(args) == 2 and args[0] == "function") \
                    and ctx["depth"] == 0 and not self.compound and len(self.stack) == 1 and not shutil.which(args[-1]):
                # NAME () or function NAME (), at the top (not in ( ), if, a function), and no program's name
                # (sort() { ...; } | true: the function went with a subshell, and sort is /usr/bin/sort)
                self.defined.add(args[-1])
            ctx["depth"] += 1
            self._advance()
            self._end_command(ctx)
            return
        if c == ")":
            self._end_word(ctx)  # "esac)" ends the case before the ) is read
            if ctx["closer"] == ")" and ctx["depth"] == 0 and ctx["case"] == 0:
                self._end_command(ctx)
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
            pipe = c == "|" and not text.startswith("||", self.i)
            self._end_command(ctx, pipe=pipe)
            self._advance(2 if text.startswith(("||", "&&", "|&"), self.i) else 1)
            return
        if c in " \t":
            self._end_word(ctx)
            self._advance()
            return
        ctx["word"] += self._advance()

    def _push_cmd(self, closer: str, outer: dict[str, Any] | None) -> None:
        """A nested command context: a $( ) in the arguments of a code runner
        feeds it, so it inherits the runner's refusal."""
        deny = self._deny()
        if outer is not None and outer["kind"] == "cmd" and deny is None:
            deny = self._command_deny(outer) if outer["command"] is not None else None
            option = None if deny is not None or outer["command"] is None or outer["command_start"] else \
                self._command_option(outer, self._so_far(outer), True)
            if option is not None:  # curl -K <(echo ...): what it prints is that option's (helper-74)
                deny = (f"in what {outer['command']} {option} reads (this substitution's output), which it runs "
                        "as a command or reads as settings")
        self.stack.append(self._new_cmd(closer, deny))

    def _dollar(self, ctx: dict[str, Any]) -> bool:
        """``$`` openings shared by commands, double quotes and heredoc bodies."""
        text = self.text
        nxt = text[self.i + 1:self.i + 2]
        outer = self._cmd_ctx()
        if text.startswith("$((", self.i):
            self._push("arith", deny="in arithmetic (bash evaluates a[$(cmd)] there)", closer="))", depth=0)
            size = 3
        elif nxt == "(":
            self._push_cmd(")", outer)
            size = 2
        elif nxt == "{":
            self._push("param", deny="inside ${...} (subscripts and offsets there are arithmetic)", depth=0)
            size = 2
        elif nxt == "[":
            self._push("arith", deny="in arithmetic (bash evaluates a[$(cmd)] there)", closer="]", depth=0)
            size = 2
        elif nxt == "'" and ctx["kind"] == "cmd":
            self._push("ansi", deny="inside $'...' quotes")
            size = 2
        else:
            return False
        if ctx["kind"] == "cmd":
            ctx["word"] += text[self.i:self.i + size]
        self._advance(size)
        return True

    def _array(self, ctx: dict[str, Any]) -> None:
        """The elements of ``name=( ... )``: values are data, but ``[k]=`` keys are arithmetic."""
        c = self.text[self.i]
        if c == OPEN:
            if ctx.get("deny"):
                self.fail(ctx["deny"])
            index = self._marker()
            self._slot(index, False, None)
            return
        if c == ")":
            self._cmd_ctx()["word"] += self._advance()
            self.stack.pop()
            return
        if c == "[":
            self._advance()
            self._push("arith", deny="in an array key (bash evaluates it as arithmetic)", closer="]", depth=0)
            return
        if c == "'":
            self._push("sq")
        elif c == '"':
            self._push("dq", word_start=None, content=True)
        elif c == "$" and self._dollar(ctx):
            return
        elif c == "\\":
            if self.text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            self._advance(2)
            return
        elif c == "#":
            self.fail("in an array with a comment (dagrun does not read those)")
        self._advance()

    def _sq(self, ctx: dict[str, Any]) -> None:
        end = self.text.find("'", self.i)
        end = len(self.text) if end < 0 else end
        if self.text.find(OPEN, self.i, end) >= 0:
            self._advance(self.text.find(OPEN, self.i, end) - self.i)
            self.fail("inside single quotes (nothing expands there; close the quotes around it)")
        self._cmd_ctx()["word"] += self._advance(end + 1 - self.i)
        if end < len(self.text):
            self.stack.pop()

    def _ansi(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        cmd = self._cmd_ctx()
        if c == OPEN:
            self.fail(ctx["deny"])
        if c == "\\":
            self._advance(2)
            cmd["word"] += "x"
        elif c == "'":
            cmd["word"] += self._advance()
            self.stack.pop()
        else:
            self._advance()
            cmd["word"] += "x"

    def _dq(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        cmd = self._cmd_ctx()
        if c == OPEN:
            index = self._marker()
            self._check_use(cmd, index)
            start = ctx["word_start"] if not ctx["content"] else None
            self._slot(index, True, start, cmd["dashdash"] or cmd["redirect"])
            cmd["word_markers"].append(index)
            return
        if c == "\\":
            if self.text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            newline = self.text.startswith("\n", self.i + 1)
            self._advance(2)
            ctx["content"] = ctx["content"] or not newline  # (a line continuation is no text: helper-65)
            return
        if c == '"':
            cmd["word"] += self._advance()
            self.stack.pop()
            return
        if c == "`":
            self._push("bt", deny="inside backticks (use $( ) instead)")
            self._advance()
            return
        if c == "$" and self._dollar(ctx):
            ctx["content"] = True
            return
        name = _PLAIN_EXPANSION.match(self.text, self.i) if c == "$" else None
        if name is not None:  # "$BASE"{{ x }}: $BASE may be empty, and the value begin the word (helper-61)
            self._advance(name.end() - self.i)
            cmd["word"] += MAY_BE_EMPTY_TEXT
            return
        ctx["content"] = True
        cmd["word"] += "x"  # the word has text now (its exact characters do not matter)
        self._advance()

    def _bt(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            self.fail(ctx["deny"])
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
            self.fail(ctx["deny"])
        if c == "\\":
            self._advance(2)
        elif c == "'":
            self._push("sq")
            self._advance()
        elif c == '"':
            self._push("dq", word_start=None, content=True)
            self._advance()
        elif c == "$" and self._dollar(ctx):
            return
        elif c == "{":
            ctx["depth"] += 1
            self._advance()
        elif c == "}":
            if ctx["depth"] == 0:  # ${v:off:len}, ${a[i]}, ${!v}: all but the parameter itself is arithmetic
                inner = self.text[ctx["start"]:self.i].lstrip("${")
                if "@P" in inner or re.search(r":(?![-=+?])", inner) or re.search(r"\[(?![@*]\])", inner) \
                        or inner.startswith("!"):
                    self.evaluates = True  # ${v@P} expands a prompt (runs $( )); offsets; subscripts; ${!v}
                if "@P" in inner:  # prompt decoding makes \044 a $ and then runs it: v is code there (helper-61)
                    self.code += [(name, ctx["from_line"]) for name in _IDENTIFIER.findall(inner)[:1]]
                self._reads(inner, ctx["from_line"], skip_first=not inner.startswith("!"))
            self._advance()
            if ctx["depth"] == 0:
                self.stack.pop()
            else:
                ctx["depth"] -= 1
        else:
            self._advance()

    def _arith(self, ctx: dict[str, Any]) -> None:
        c = self.text[self.i]
        if c == OPEN:
            self.fail(ctx["deny"])
        if c == "$" and self._dollar(ctx):
            return
        if c in "([":
            ctx["depth"] += 1
        elif ctx["closer"] == "))" and c == ")":
            if ctx["depth"] == 0 and self.text.startswith("))", self.i):
                self._reads(self.text[ctx["start"]:self.i], ctx["from_line"])
                self._advance(2)
                self.stack.pop()
                return
            if ctx["depth"] == 0:  # ((cmd); cmd): bash reads two subshells there, not arithmetic (helper-69)
                self.fail("after a (( that bash may read as two subshells: write ( ( with a space between")
            ctx["depth"] -= 1
        elif ctx["closer"] == "]" and c == "]":
            if ctx["depth"] == 0:
                self._reads(self.text[ctx["start"]:self.i], ctx["from_line"])
                self._cmd_ctx()["word"] += self._advance()
                self.stack.pop()
                return
            ctx["depth"] -= 1
        elif c == "]":
            ctx["depth"] = max(0, ctx["depth"] - 1)
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
        if not delimiter:
            self.fail("in a script with a here-document that has no delimiter")
        if self.i < len(self.text) and self.text[self.i] in "()" or "$" in delimiter or "`" in delimiter:
            self.fail("in a script with a here-document whose delimiter holds $, ` or a parenthesis (dagrun "
                      "cannot tell where it ends)")
        # The body is the command's input: an interpreter reading its program there runs it.
        self.pending_heredocs.append((delimiter, quoted, strip, self._deny() or self._command_deny(ctx, stdin=True)))
        ctx["heredoc_command"] = True

    def _start_heredoc(self) -> None:
        delimiter, quoted, strip, deny = self.pending_heredocs.pop(0)
        # bash -s -- {{ v }} <<'EOF': the body is the program, and the values are its $1, $2...
        program = deny is not None and deny.startswith("in the input of ") and \
            deny[len("in the input of "):].split(",", 1)[0] in _SHELL_NAMES
        self.stack.append({"kind": "heredoc", "delimiter": delimiter, "quoted": quoted, "strip": strip,
                           "line_start": True, "deny": deny, "program": program, "body_start": self.i})

    def _heredoc(self, ctx: dict[str, Any]) -> None:
        text = self.text
        if ctx["line_start"]:
            end = text.find("\n", self.i)
            end = len(text) if end < 0 else end
            line = text[self.i:end]
            if (line.lstrip("\t") if ctx["strip"] else line) == ctx["delimiter"]:
                body = text[ctx["body_start"]:self.i]
                self._advance(min(end + 1, len(text)) - self.i)
                self.stack.pop()
                if ctx["program"]:
                    self._inner(body if ctx["quoted"] else body.replace("\\$", "$").replace("\\`", "`"),
                                arguments=True)
                if ctx["deny"]:  # (a program's code: python3 <<'EOF' ... os.system(os.environ[...]))
                    self._environment_to_shell(body)
                if ctx["deny"] and not ctx["quoted"]:  # (input of a program that runs it, or unseen)
                    # python3 - <<EOF ... $x ...: the value would be part of the program
                    self.code += [(name, self.line) for name in _EXPANSION.findall(body.replace("\\$", ""))]
                    if "$(" in body.replace("\\$", "") or "`" in body.replace("\\`", ""):  # bash <<EOF $(f) EOF
                        self.code_from_output = self.code_from_output or self.line
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
            if ctx.get("deny"):
                self.fail(ctx["deny"])
            index = self._marker()
            self._slot(index, True, None)
            return
        if c == "\\":
            if text.startswith(OPEN, self.i + 1):
                self.fail("right after a backslash")
            self._advance(2)
            return
        if c == "`":
            self._push("bt", deny="inside backticks (use $( ) instead)")
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
    return _analysed(text)[0]


# (CONFIG_ alone too: ${!CONFIG_*}, env | grep ^CONFIG_ name the variables holding values)
_CONFIG_REFERENCE = re.compile(r"(?<![A-Za-z0-9_])(?:CONFIG_|DAGRUN_(?:VALUE_|WORKSPACE_ID|CONFIG|RESULT))")

# libpq reads these as names, except that vacuumdb, reindexdb, clusterdb, pgbench and pg_amcheck
# take PGDATABASE (or else PGUSER) as their database name, which they expand as a connection string.
# ($PGHOST: a value starting with / or @ would be a socket folder of this machine.)
LIBPQ_NAME_VARIABLES = frozenset({"PGDATABASE", "PGUSER", "PGHOST"})


def check_libpq_name(variable: str, text: str, where: str = "") -> None:
    """A value for $PGDATABASE or $PGUSER is a name, never a connection
    string (host=... user=postgres, postgresql://...); one for $PGHOST a
    host name, never a socket folder."""
    if "=" in text or text.lower().startswith(("postgres://", "postgresql://")):
        raise ShellValueError(f"{where}a value for ${variable} holds '=' or is a URL: some libpq programs read it "
                              "as a whole connection string (dbname=x user=postgres), so it must be a plain name")
    if variable == "PGHOST" and any(not host.strip() or host.strip().startswith(("/", "@"))
                                    for host in text.split(",")):  # (a list of hosts: each one)
        raise ShellValueError(f"{where}a value for $PGHOST names a socket folder of this machine (or none, the "
                              "default one): host names only")


def _analysed(text: str) -> tuple[list[Slot], bool]:
    """The slots of ``text``'s markers, and whether it evaluates text anywhere."""
    lexer = _Lexer(text)
    if OPEN not in text:
        if not _CONFIG_REFERENCE.search(text):
            return [], False  # no value reaches it
        try:
            lexer.run()
        except UnsafeContext as exc:
            if exc.reason.startswith(("through $", "through an argument", "in a script that pipes",
                                      "in a script where a command's output",
                                      "in a script that expands aliases", "in a script that runs a command's output")):
                raise  # a value's use dagrun could tell, not the lexer's doubt
            lexer.evaluates = True  # a script the lexer cannot follow: taken to evaluate
    else:
        slots = lexer.run()
        placed = {slot.index for slot in slots}
        for m in _MARKER.finditer(text):
            if int(m.group(1)) not in placed:
                raise UnsafeContext(1 + text[:m.start()].count("\n"), "where dagrun cannot tell how bash reads it")
    reference = _CONFIG_REFERENCE.search(text) if lexer.evaluates else None
    if reference is not None:
        line = 1 + text[:reference.start()].count("\n")
        raise UnsafeContext(line, "through $CONFIG_<KEY> in a script that evaluates text (arithmetic, -v, read, "
                                  "namerefs, prompts), where bash would run a[$(cmd)] held in it: write "
                                  "{{ config.<key> }} instead, which dagrun checks")
    return (slots if OPEN in text else []), lexer.evaluates


@functools.lru_cache(maxsize=256)
def check_plain(text: str) -> None:
    """A script with no ``{{ }}``: the variables dagrun gives it that hold
    values ($DAGRUN_WORKSPACE_ID, $CONFIG_<KEY>...) are still never code."""
    _analysed(text)


def check_names(text: str, names: Iterable[str]) -> bool:
    """Check a script against variables given to it that hold values (a
    step's ``env`` entries, besides the ``{{ }}`` it holds): raises
    :class:`UnsafeContext` where one would be code, a command, or read by
    arithmetic. Returns whether the script evaluates text anywhere (then no
    such variable may hold $ or `: see :func:`substitute`)."""
    return _checked_names(text, frozenset(names))


@functools.lru_cache(maxsize=256)
def _checked_names(text: str, names: frozenset[str]) -> bool:
    lexer = _Lexer(text)
    lexer.tainted |= names
    lexer.given = names
    lexer.run()
    return lexer.evaluates


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
    found, evaluates = _analysed(rendered)
    slots = {slot.index: slot for slot in found}
    env: dict[str, str] = {}
    counter = [start]

    def var(text: str, slot: Slot, word_start: bool, dashes: bool = False) -> str:
        if "\0" in text:
            raise ShellValueError(f"line {slot.line}: a value holds a NUL character, which a script cannot receive")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
            raise ShellValueError(f"line {slot.line}: a value is larger than {MAX_VALUE_BYTES} bytes")
        if evaluates and ("$" in text or "`" in text):  # the message never shows the value: it may be a secret
            raise ShellValueError(f"line {slot.line}: a value holds $ or `, and this script evaluates text "
                                  "(arithmetic, [[ -eq ]], -v, read, namerefs, prompts), where bash would run "
                                  "$( ) held in a variable: keep values out of such scripts, or compare with [ ]")
        if word_start and text.startswith("-"):
            raise ShellValueError(f"line {slot.line}: a value starts with '-' and would be read as an option; "
                                  "put '--' before it in the script")
        if dashes and text and not text.isdigit():
            raise ShellValueError(f"line {slot.line}: a value follows '-' (and letters) in its word, which makes "
                                  "options of it (tar -c{{ v }}f, -{{ v }}): only a number may stand there (tail "
                                  "-{{ n }}, make -j{{ n }}); give an option's argument as a word of its own")
        if slot.assigned in LIBPQ_NAME_VARIABLES:
            check_libpq_name(slot.assigned, text, f"line {slot.line}: ")
        name = f"{VALUE_PREFIX}{counter[0]}"
        counter[0] += 1
        env[name] = text
        return name

    def starts_word(slot: Slot) -> bool:
        """A value begins its word when every value before it in the word is empty."""
        return slot.word_start and not slot.options_end and all(as_text(values[i]) == "" for i in slot.before)

    def replace(m: re.Match) -> str:
        slot = slots[int(m.group(1))]
        value = values[slot.index]
        if slot.quoted:
            return "${" + var(as_text(value), slot, starts_word(slot), slot.after_dashes) + "}"
        if isinstance(value, (list, tuple)):  # one word per item: each after the first begins a word
            if slot.assignment and len(value) > 1:  # NAME=a b: b would be the command, or declare's next name
                raise ShellValueError(f"line {slot.line}: a list of several items cannot be assigned to a variable "
                                      "(its second item would be read as a command or a name): join it "
                                      "({{ x | join(' ') }}) or quote it (\"{{ x }}\")")
            return " ".join('"${' + var(as_text(v), slot, starts_word(slot) if i == 0 else not slot.options_end,
                                       slot.after_dashes and i == 0) + '}"' for i, v in enumerate(value))
        return '"${' + var(as_text(value), slot, starts_word(slot), slot.after_dashes) + '}"'

    return ShellScript(_MARKER.sub(replace, rendered), env, evaluates)
