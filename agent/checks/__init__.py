"""Preflight checks (the README check table): declared units, their registry, one runner, and reports.

Each check is a `Check` value in a module of its own; `registry.CHECKS` lists them in the
contract's order; `run_checks` runs them against a `CheckContext`; `report` renders the
results for a terminal or as the contract's JSON.
"""

from agent.checks.base import Check, CheckContext, CheckVerdict
from agent.checks.registry import CHECK_IDS, CHECKS
from agent.checks.report import render_table, to_json
from agent.checks.runner import UnknownCheck, run_checks

__all__ = [
    "CHECKS",
    "CHECK_IDS",
    "Check",
    "CheckContext",
    "CheckVerdict",
    "UnknownCheck",
    "render_table",
    "run_checks",
    "to_json",
]
