"""The machinery that turns a plain mapping into a frozen config dataclass, by its fields.

A config section is a frozen dataclass (in a module without postponed annotations, so a
field's type is an object, not text); each field's annotation is its type (``bool``,
``int``, ``float``, ``str``, ``Path``, a ``Literal`` of choices, ``tuple[str, ...]``,
``Mapping[str, str]``, another section, any of them ``| None``), its default is the
default, and its `rule` metadata holds the bounds and any check of the value's shape. A
section may also define ``complete(values)`` for what spans keys (a certificate needs its
key; the broker's host comes from its URL). Reading never stops at the first mistake: every
`Problem` is collected with its key path, so an operator fixes a file in one round.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    S = TypeVar("S", bound=DataclassInstance)

Complete = Callable[[dict[str, Any]], Iterable[tuple[str, str]]]
"""A section's rule across keys: may fill derived values; yields (key, message) problems."""


@dataclass(frozen=True)
class Problem:
    """One mistake: the key path, what is wrong, and where the value came from if known."""

    key: str
    message: str
    where: str | None = None

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" + (f" ({self.where})" if self.where else "")


class ConfigError(Exception):
    """Configuration errors in a file that exists: exit 78, naming each key path.

    ``key`` and ``message`` are the first problem's; ``problems`` holds all of them.
    """

    def __init__(self, key: str, message: str, where: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = (Problem(key, message, where),)
        super().__init__(str(self.problems[0]))
        self.key = key
        self.message = message

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> ConfigError:
        found = tuple(problems)
        assert found, "a ConfigError needs at least one problem"
        first = found[0]
        err = cls(first.key, first.message, first.where)
        err.problems = found
        if len(found) > 1:
            lines = "".join(f"\n  {p}" for p in found)
            err.args = (f"{len(found)} problems:{lines}",)
        return err


class ConfigMissing(Exception):
    """The config file does not exist (yet): exit 1 so systemd keeps retrying."""


@dataclass(frozen=True)
class Rule:
    """How a field is checked beyond its type. ``derived``: not a key, set by the code."""

    gt: float | None = None
    ge: float | None = None
    # Called with the field's value, of the field's own type (`_prom` takes a Path, `_uid` a
    # str): only the reader, reflecting over the field, knows which, so it stays untyped here.
    check: Callable[[Any], str | None] | None = None
    derived: bool = False


def rule(
    *,
    gt: float | None = None,
    ge: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    derived: bool = False,
) -> Mapping[str, Rule]:
    """Field metadata: ``field(default=10.0, metadata=rule(gt=0))``."""
    # Read-only: one metadata value is shared by every field that uses it.
    return MappingProxyType({"rule": Rule(gt=gt, ge=ge, check=check, derived=derived)})


class _Bad(Exception):
    """A value's problem, raised inside the reader and turned into a `Problem` at its key."""


@dataclass
class Reader:
    """One pass over a document. ``readable``: probe each ``*_file`` (None: do not)."""

    readable: Callable[[Path], bool] | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def section(self, cls: type[S], data: object, path: str) -> S | None:
        """The dataclass ``cls`` read from ``data``, or None after recording its problems."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problems.append(Problem(path or "<root>", f"must be a mapping, got {kind(data)}"))
            return None
        before = len(self.problems)
        values: dict[str, Any] = {}
        keys = set()
        for f in dataclasses.fields(cls):
            r: Rule = f.metadata.get("rule", Rule())
            if r.derived:
                continue
            keys.add(f.name)
            key = join(path, f.name)
            try:
                assert not isinstance(f.type, str), f"{cls.__name__}: postponed annotations"
                values[f.name] = self._field(f, f.type, r, data.get(f.name), key)
            except _Recorded:
                pass
            except _Bad as e:
                self.problems.append(Problem(key, str(e)))
        for name in sorted(str(k) for k in data if k not in keys):
            self.problems.append(Problem(join(path, name), "unknown key (check the spelling)"))
        complete: Complete | None = getattr(cls, "complete", None)
        if complete is not None:
            for name, message in complete(values):
                self.problems.append(Problem(join(path, name), message))
        if len(self.problems) > before:
            return None
        return cls(**values)

    def _field(
        self, f: dataclasses.Field[object], tp: object, r: Rule, raw: object, key: str
    ) -> object:
        if raw is None:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise _Bad("is required")
        value = self._value(tp, raw, key, f.name)
        if r.ge is not None or r.gt is not None:
            assert isinstance(value, int | float), f"{key}: bounds on a field that is no number"
            if r.ge is not None and value < r.ge:
                raise _Bad(f"must be at least {r.ge:g}, got {value}")
            if r.gt is not None and value <= r.gt:
                raise _Bad(f"must be greater than {r.gt:g}, got {value}")
        if r.check is not None:
            message = r.check(value)
            if message:
                raise _Bad(message)
        return value

    def _value(self, tp: object, raw: object, key: str, name: str) -> object:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            assert len(inner) == 1, f"{key}: only X | None unions are supported"
            return self._value(inner[0], raw, key, name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            value = self.section(tp, raw, key)
            if value is None:
                raise _Recorded
            return value
        if origin is Literal:
            return _choice(args, raw)
        if tp is bool:
            if not isinstance(raw, bool):
                raise _Bad(f"must be true or false, got {kind(raw)}")
            return raw
        if tp is int or tp is float:
            return _number(raw, integer=tp is int)
        if tp is str:
            return _string(raw)
        if tp is Path:
            return self._path(_string(raw), name)
        if origin is tuple:
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise _Bad("must be a list of strings (quote versions)")
            return tuple(raw)
        if origin in (Mapping, dict):
            if not isinstance(raw, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
            ):
                raise _Bad("must be a mapping of strings to strings")
            return dict(raw)
        raise AssertionError(f"{key}: no reader for {tp!r}")

    def _path(self, text: str, name: str) -> Path:
        p = Path(text)
        if not p.is_absolute():
            raise _Bad(f"must be an absolute path, got {text!r}")
        # Only `run` probes: `check` reports unreadable files as a failing check instead.
        if name.endswith("_file") and self.readable is not None and not self.readable(p):
            raise _Bad(f"cannot read {text}")
        return p


class _Recorded(_Bad):
    """A nested section failed; its own problems are already recorded."""


def _choice(choices: tuple[object, ...], raw: object) -> object:
    shown = ", ".join(str(c) for c in choices)
    if all(isinstance(c, str) for c in choices) and not isinstance(raw, str):
        hint = " (quote it in YAML)" if isinstance(raw, int | float) else ""
        raise _Bad(f"must be a string, got {kind(raw)}{hint}")
    if isinstance(raw, bool) or raw not in choices:
        raise _Bad(f"must be one of {shown}; got {raw!r}")
    return raw


def _number(raw: object, *, integer: bool) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Bad(f"must be a number, got {kind(raw)}")
    if integer and not isinstance(raw, int):
        raise _Bad("must be a whole number")
    return raw


def _string(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Bad(f"must be a string, got {kind(raw)}")
    return raw


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def kind(v: object) -> str:
    """How an operator would name a YAML value's type."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a mapping", type(None): "nothing"}
    return names.get(type(v), type(v).__name__)
