"""Fixtures of the appliance suite: the provider images (built once, cached outside the
clone). Skipped, with the reason, where systemd-nspawn cannot boot a container at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import __version__
from tests.appliance.image import appliance_image
from tests.system.nspawn import cannot_boot_reason

NEWER = f"{__version__}.post1"  # a newer build, as PEP 440 and the wheel name spell it


@pytest.fixture(scope="session")
def image() -> Path:
    reason = cannot_boot_reason()
    if reason:
        pytest.skip(f"cannot boot a systemd container here: {reason}")
    return appliance_image()


@pytest.fixture(scope="session")
def newer_image(image: Path) -> Path:
    """The next image of an A/B upgrade: the same layout, an agent built as ``NEWER``."""
    return appliance_image(version=NEWER)
