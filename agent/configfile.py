"""Reading the config from the outside world: the YAML file and ``EDGE_AGENT__*`` variables.

This is the edge half of configuration; the schema and its validation are pure, in
`agent.core.config`. Here the file is read and composed with PyYAML so each key keeps the
line it was written on, environment overrides are laid over it (remembering the variable
each value came from), and every problem is reported with that origin: an operator who set
``EDGE_AGENT__JOIN__RETRY_BACKOFF_S=abc`` is told about the variable, not sent to a file
that is fine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from agent.core.config import Config, ConfigError, ConfigMissing, Problem, parse_config
from agent.core.config_rules import join

ENV_PREFIX = "EDGE_AGENT__"
Readable = Callable[[Path], bool]


def file_readable(path: Path) -> bool:
    """Whether the agent can open ``path`` now (it is read again whenever it is needed)."""
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def load_config(
    path: Path, env: Mapping[str, str] | None = None, *, readable: Readable | None = file_readable
) -> Config:
    """Read and validate the file with the environment's overrides.

    `ConfigMissing` when the file does not exist; otherwise one `ConfigError` listing every
    problem. ``readable=None`` skips probing the ``*_file`` keys (``edge-agent check``
    reports those as a failing check instead).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigMissing(f"config file {path} does not exist (yet)") from e
    except OSError as e:
        raise ConfigError(str(path), f"cannot read it: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), f"not UTF-8 text: {e.reason} at byte {e.start}") from e
    doc, lines, problems = compose(text, path)
    origins = {key: f"{path}, line {line}" for key, line in lines.items()}
    if isinstance(doc, Mapping):
        doc = apply_env(doc, env or {}, origins, problems)
    try:
        cfg = parse_config(doc, readable=readable, source=path, origins=origins)
    except ConfigError as e:
        problems += e.problems
    if problems:
        # In the file's order, as an operator reads it; the environment's come last.
        raise ConfigError.of(sorted(problems, key=lambda p: _line(p, lines)))
    return cfg


def _line(p: Problem, lines: Mapping[str, int]) -> float:
    if p.where is None or not p.where.startswith("environment"):
        key = p.key
        while key:
            if key in lines:
                return lines[key]
            key = key.rpartition(".")[0]
    return float("inf")


def compose(text: str, path: Path) -> tuple[object, dict[str, int], list[Problem]]:
    """The document, the line of each key path, and its duplicate keys.

    Composing first (rather than ``safe_load``) keeps PyYAML's marks, so a value's line is
    known; a duplicate key is a problem because PyYAML would silently keep the last one.
    """
    # libyaml's loader when PyYAML has it (its wheels do): several times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), f"{at}not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    if node is not None:
        _key_lines(node, "", path, lines, problems)
    return doc, lines, problems


def _key_lines(
    node: yaml.Node, prefix: str, path: Path, lines: dict[str, int], problems: list[Problem]
) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
            continue  # merge keys and odd keys: the schema names them as unknown if wrong
        key = join(prefix, str(key_node.value))
        line = key_node.start_mark.line + 1
        if key in first:
            message = f"duplicate key (first at line {first[key]})"
            problems.append(Problem(key, message, f"{path}, line {line}"))
        first.setdefault(key, line)
        lines[key] = line
        _key_lines(value_node, key, path, lines, problems)


def apply_env(
    doc: Mapping[str, object],
    env: Mapping[str, str],
    origins: dict[str, str],
    problems: list[Problem],
) -> dict[str, object]:
    """Overlay ``EDGE_AGENT__SECTION__KEY`` (or ``EDGE_AGENT__KEY``) values, YAML-typed.

    Each overridden key's origin becomes its variable; problems with a variable's name or
    value are added to ``problems``.
    """
    out: dict[str, object] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in doc.items()}
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        where = f"environment variable {name}"
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not 1 <= len(parts) <= 2:
            problems.append(Problem(name, "must be EDGE_AGENT__SECTION__KEY or EDGE_AGENT__KEY"))
            continue
        key = ".".join(parts)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            problems.append(Problem(key, f"not a YAML value: {e}", where))
            continue
        for known in [k for k in origins if k.startswith(f"{key}.")]:
            del origins[known]  # a whole section replaced: the file's lines no longer apply
        origins[key] = where
        if len(parts) == 1:
            out[key] = value
            continue
        section = out.get(parts[0])
        if section is None:
            section = out[parts[0]] = {}
            origins.setdefault(parts[0], where)  # the section exists only by this variable
        if not isinstance(section, dict):
            problems.append(
                Problem(parts[0], "must be a mapping to take an environment override", where)
            )
            continue
        section[parts[1]] = value
    return out
