"""The Python 3.11 features the agent uses, for 3.10 too (Ubuntu 22.04's system Python).

On 3.11 and newer these are the standard library's own; on 3.10 they come from maintained
backports of the same code, installed only there (environment markers in pyproject.toml):
``taskgroup`` (asyncio.TaskGroup and asyncio.timeout as CPython 3.11 has them, including the
task un-cancelling both rely on), ``exceptiongroup`` and ``backports.strenum``. The agent
imports these names from here, never from asyncio or the backports, so dropping 3.10 is one
edit. 3.10 cannot parse ``except*``: a TaskGroup's errors are caught as ``BaseExceptionGroup``
and split instead.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

if sys.version_info >= (3, 11):
    import builtins
    from asyncio import TaskGroup, timeout
    from enum import StrEnum
    from typing import assert_never

    BaseExceptionGroup = builtins.BaseExceptionGroup
else:  # pragma: no cover - type-checked and linted as 3.11
    from typing import NoReturn

    from backports.strenum import StrEnum
    from exceptiongroup import BaseExceptionGroup
    from taskgroup import TaskGroup, timeout

    def assert_never(arg: NoReturn, /) -> NoReturn:
        raise AssertionError(f"Expected code to be unreachable, but got: {arg!r}")


__all__ = [
    "BaseExceptionGroup",
    "StrEnum",
    "TaskGroup",
    "assert_never",
    "split",
    "suppress_group",
    "timeout",
]


def split(
    exc: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> tuple[BaseExceptionGroup[BaseException] | None, BaseException | None]:
    """``except* kind`` as 3.10 can parse it: (the part that matches, as a group; the rest).

    Like ``except*``, a naked exception is matched as a group of one, and comes back as
    itself when it does not match, so a bare ``raise`` re-raises it unchanged.
    """
    if exc is None:
        return None, None
    if not isinstance(exc, BaseExceptionGroup):
        return (BaseExceptionGroup("", [exc]), None) if isinstance(exc, kind) else (None, exc)
    matched, rest = exc.split(kind)
    # split() copies a group that nothing matched; keep the original for a bare `raise`.
    return (None, exc) if matched is None else (matched, rest)


@contextlib.contextmanager
def suppress_group(kind: type[BaseException]) -> Iterator[None]:
    """``except* kind: pass``: swallow what matches `kind`, re-raise the rest."""
    try:
        yield
    except BaseException as exc:
        _, rest = split(exc, kind)
        if rest is exc:
            raise
        if rest is not None:
            raise rest from None
