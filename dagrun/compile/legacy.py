"""The way off the old monolithic template config.

Before action-based templates, a template was one JSON document::

    {"ssh_required": bool, "packages": [...], "extensions": [...],
     "repositories": [...], "settings": {...}, "postgresql": {...},
     "launch_json": {...}, "workspace_file": {...}, "environment": {...},
     "post_create_script": "bash commands"}

:func:`convert` turns it into an action-based template with the same
effect, one step per concern, ordered by the graph rather than by a fixed
sequence. ``run_template()`` and ``compile_template()`` accept a legacy
document directly (converted on the fly); ``dagrun migrate-legacy`` writes
the converted template to a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any

from ..errors import Problem, TemplateError

LEGACY_KEYS = frozenset({"ssh_required", "packages", "extensions", "repositories", "settings", "postgresql",
                         "launch_json", "workspace_file", "environment", "post_create_script"})


_QUOTED_HEREDOC = re.compile(r"<<(-?)\s*(['\"])(\w+)\2")
_VALUE = re.compile(r"(\{\{.*?\}\})")


def unquote_heredocs(script: str) -> str:
    """Legacy scripts put ``{{ }}`` in quoted here-documents (``<<'CONF'``),
    where nothing expands: the old string replace made that "work" and made
    every value code. The converted script uses an unquoted here-document
    whose own text is escaped (``\\``, ``$``, backticks), so it still reads
    literally, and whose values arrive as data."""
    lines = script.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _QUOTED_HEREDOC.search(line)
        end = None
        if m:
            delimiter, strip = m.group(3), m.group(1) == "-"
            end = next((j for j in range(i + 1, len(lines))
                        if (lines[j].lstrip("\t") if strip else lines[j]) == delimiter), None)
        if m is None or end is None or not any("{{" in body for body in lines[i + 1:end]):
            out.append(line)
            i += 1
            continue
        out.append(line[:m.start()] + f"<<{m.group(1)}{m.group(3)}" + line[m.end():])
        for body in lines[i + 1:end]:
            out.append("".join(part if _VALUE.fullmatch(part) else
                               part.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
                               for part in _VALUE.split(body)))
        out.append(lines[end])
        i = end + 1
    return "\n".join(out)


def is_legacy(doc: Mapping[str, Any]) -> bool:
    """A legacy config has legacy keys and no action list."""
    config = doc.get("config", doc) if isinstance(doc.get("config"), Mapping) else doc
    return "actions" not in doc and bool(LEGACY_KEYS & set(config))


def convert(doc: Mapping[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """Convert a legacy config (or a stored template whose ``config`` holds it)."""
    config: Mapping[str, Any] = doc["config"] if isinstance(doc.get("config"), Mapping) else doc
    name = name or str(doc.get("name") or "legacy-template")
    problems = [Problem(name, "not a mapping", field=key) for key in ("settings", "postgresql", "launch_json",
                                                                       "workspace_file", "environment")
                if key in config and config[key] is not None and not isinstance(config[key], Mapping)]
    problems += [Problem(name, "not a list", field=key) for key in ("packages", "extensions", "repositories")
                 if key in config and config[key] is not None and not isinstance(config[key], list)]
    if problems:
        raise TemplateError(problems)
    steps: list[dict[str, Any]] = []

    def add(seq: int, step_id: str, action: str, cfg: dict[str, Any], **extra: Any) -> None:
        steps.append({"sequence_order": seq, "id": step_id, "action_name": action, "action_config": cfg, **extra})

    if config.get("packages"):
        add(10, "system_packages", "install_system_packages", {"packages": list(config["packages"])},
            phase="pre_setup")
    if config.get("ssh_required"):
        add(15, "ssh_access", "write_file",
            {"target_path": "~/.ssh/authorized_keys", "content": "{{ workspace.ssh_public_key }}\n"},
            phase="pre_setup", condition_expression="workspace.ssh_public_key IS NOT NULL")
    pg = config.get("postgresql") or {}
    if pg and pg.get("enabled", True):
        user = pg.get("user") or pg.get("username") or "{{ workspace.linux_username }}"
        database = pg.get("database") or pg.get("db_name") or "{{ workspace.db_name }}"
        user_cfg = {"username": user}
        if pg.get("password"):
            user_cfg["password"] = pg["password"]
        add(20, "db_user", "create_postgresql_user", user_cfg, phase="pre_setup")
        add(30, "database", "create_postgresql_database",
            {"database_name": database, "owner": user, "encoding": pg.get("encoding", "UTF8")})
    env = config.get("environment") or {}
    venv_path = env.get("venv_path") or "~/venv"
    if env:
        add(40, "venv", "create_python_venv",
            {"venv_path": venv_path, "python_version": env.get("python_version") or env.get("python", "python3")})
    clone_ids = []
    for i, repo in enumerate(config.get("repositories") or []):
        if isinstance(repo, str):
            repo = {"url": repo}
        step_id = f"repo_{i + 1}"
        cfg = {"url": repo["url"], "branch": str(repo.get("branch", "main"))}
        target = repo.get("target_dir") or repo.get("path")
        if target:
            cfg["target_dir"] = target
        for key in ("shallow", "private"):
            if key in repo:
                cfg[key] = bool(repo[key])
        extra: dict[str, Any] = {}
        if repo.get("optional") or repo.get("private"):
            extra["skip_on_error"] = True
        add(60 + i, step_id, "clone_git_repository", cfg, **extra)
        clone_ids.append(step_id)
    requirements = env.get("requirements_file") or env.get("requirements")
    if env and (requirements or env.get("packages")):
        cfg = {"venv_path": venv_path}
        if requirements:
            cfg["requirements_file"] = requirements
        if env.get("packages"):
            cfg["packages"] = list(env["packages"])
        extra = {"requires": ["venv", *clone_ids]}
        if requirements:
            extra["condition_expression"] = f"file_exists({requirements!r})"
        add(50, "requirements", "install_pip_requirements", cfg, **extra)
    if config.get("extensions"):
        add(80, "extensions", "install_vscode_extensions", {"extensions": list(config["extensions"])},
            phase="post_setup", skip_on_error=True)
    if config.get("settings"):
        add(90, "vscode_settings", "create_vscode_settings", {"settings": dict(config["settings"])},
            phase="post_setup")
    if config.get("launch_json"):
        launch = config["launch_json"]
        add(91, "launch_json", "create_launch_json", {"configurations": list(launch.get("configurations", []))},
            phase="post_setup")
    if config.get("workspace_file"):
        wf = config["workspace_file"]
        cfg = {"folders": list(wf.get("folders") or [{"path": "."}]), "settings": dict(wf.get("settings") or {})}
        if wf.get("extensions"):
            recommendations = wf["extensions"]
            cfg["extensions"] = list(recommendations.get("recommendations", []) if isinstance(recommendations, Mapping)
                                     else recommendations)
        if wf.get("name") or wf.get("filename"):
            cfg["target_path"] = f"~/{wf.get('filename') or wf['name'] + '.code-workspace'}"
        add(92, "workspace_file", "create_workspace_file", cfg, phase="post_setup")
    if config.get("post_create_script"):
        add(100, "post_create", "execute_custom_script", {"script": unquote_heredocs(str(config["post_create_script"]))},
            phase="post_setup")
    return {
        "name": name,
        "version": str(doc.get("version", "1.0.0")),
        "description": (doc.get("description") or f"{name} (migrated from the monolithic format)"),
        "global_config": {"parallel_execution_enabled": True, "continue_on_non_critical_errors": True,
                          "rollback_on_failure": True},
        "actions": steps,
    }
