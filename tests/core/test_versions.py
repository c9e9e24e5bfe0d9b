"""Version strings are ASCII digits, anchored: in an assignment and in an upgrade command."""

from __future__ import annotations

from typing import Any, cast

import pytest

from agent.commands.dispatcher import ArgsError
from agent.commands.handlers import build_specs
from agent.core.assignment import AssignmentError
from agent.testing import sample_assignment_obj


class _Idle:
    """Argument checks run before any operation: building the specs needs only this."""

    def cancel_lifecycle_work(self) -> None:
        raise AssertionError("not called while checking arguments")


def _upgrade() -> Any:
    return build_specs(cast(Any, _Idle()))["upgrade"]


LOOSE = [
    "1.31\n",
    "\uff11.\uff13\uff11",
    "1.\u06631",
    "1.31 ",
    "v1.31",
    "1.31.",
    "1..31",
    "1.31.2.4",
    "",
]


@pytest.mark.parametrize("version", ["1.31", "1.31.2", "10.0"])
def test_plain_versions_pass_both(version: str) -> None:
    assert sample_assignment_obj(kubernetes_version=version).kubernetes_version == version
    assert _upgrade().check_args({"kubernetes_version": version})["kubernetes_version"] == version


@pytest.mark.parametrize("version", LOOSE)
def test_an_assignment_with_a_loose_version_is_refused(version: str) -> None:
    with pytest.raises(AssignmentError, match="kubernetes_version"):
        sample_assignment_obj(kubernetes_version=version)


@pytest.mark.parametrize("version", LOOSE)
def test_an_upgrade_to_a_loose_version_is_refused(version: str) -> None:
    with pytest.raises(ArgsError, match="kubernetes_version"):
        _upgrade().check_args({"kubernetes_version": version})
