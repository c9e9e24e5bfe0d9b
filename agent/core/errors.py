"""The root of the agent's own exceptions.

Everything the agent raises on purpose derives from `AgentError`, so a caller can tell the
agent's decisions (a bad assignment, a refused command, an unusable key) from a bug, and
catch them as one family where it must. Subclasses keep their standard bases too
(``ValueError`` for bad input) so existing ``except`` clauses go on working.
"""

from __future__ import annotations


class AgentError(Exception):
    """An error the agent raises on purpose; its message says what is wrong."""


__all__ = ["AgentError"]
