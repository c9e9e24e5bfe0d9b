"""``enum.StrEnum`` on Python 3.10 too (Ubuntu 22.04's system Python).

3.11 has it in the standard library; on 3.10 the maintained backport ``backports.strenum``
(installed only there, by an environment marker) is the same class. Kept in the core, apart
from agent/_compat.py, because the core imports nothing outside itself.
"""

from __future__ import annotations

try:
    from enum import StrEnum
except ImportError:  # pragma: no cover - Python 3.10
    from backports.strenum import StrEnum  # type: ignore[no-redef,import-not-found,unused-ignore]

__all__ = ["StrEnum"]
