"""The session-wide secret scan of tests/conftest.py can fail: a log holding a secret is named,
with the kind of secret, and files meant to hold secrets are read for them, not reported.

The files here are written outside pytest's base temporary directory (and removed), or the
scan at the end of the session would rightly report them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.testing import ACTIVATION_CODE
from tests.conftest import Leak, discover_secrets, is_log, known_secrets, scan_logs

HOST_TOKEN = "hT0ken-9f8e7d6c5b4a39281706"
REG_TOKEN = "regtoken-0123456789"


@pytest.fixture
def outside() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="secret-scan-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _site(root: Path) -> Path:
    """A host's files: the secret-holding ones, and clean logs."""
    site = root / "site"
    (site / "state" / "logs").mkdir(parents=True)
    (site / "registration-token").write_text(REG_TOKEN + "\n")
    (site / "state" / "host_token").write_text(HOST_TOKEN)
    (site / "assignment.yaml").write_text(
        yaml.safe_dump({"ssm": {"activation_code": ACTIVATION_CODE}})
    )
    (site / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "state_dir": str(site / "state"),
                "assignment_file": str(site / "assignment.yaml"),
                "controller": {"registration_token_file": str(site / "registration-token")},
            }
        )
    )
    (site / "nodeconfig.yaml").write_text(f"activationCode: {ACTIVATION_CODE}\n")
    (site / "agent.out").write_text('{"event": "agent.started"}\n')
    (site / "state" / "logs" / "nodeadm-init.log").write_text("ok\n")
    return site


def test_clean_logs_pass_and_secret_files_are_read_not_reported(outside: Path) -> None:
    site = _site(outside)
    secrets = {**known_secrets(), **discover_secrets(outside)}
    assert secrets[HOST_TOKEN] == "host token"
    assert secrets[REG_TOKEN] == "registration token"
    assert secrets[ACTIVATION_CODE] == "activation code"
    assert scan_logs(outside, secrets) == []
    assert not is_log(site / "nodeconfig.yaml") and not is_log(site / "state" / "host_token")


@pytest.mark.parametrize(
    ("log", "text", "kind"),
    [
        ("agent.out", f'{{"msg": "code {ACTIVATION_CODE}"}}', "activation code"),
        ("state/logs/nodeadm-install.log.1", f"token={HOST_TOKEN}", "host token"),
        ("broker/mosquitto.log", "Bearer regtoken-fedcba9876", "registration token"),
        ("agent.log", f"Authorization: Bearer {REG_TOKEN}", "registration token"),
    ],
)
def test_a_secret_in_any_log_is_named_with_its_file_and_kind(
    outside: Path, log: str, text: str, kind: str
) -> None:
    site = _site(outside)
    path = site / log
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    leaks = scan_logs(outside, {**known_secrets(), **discover_secrets(outside)})
    assert leaks == [Leak(path, kind)]
    assert str(path) in str(leaks[0]) and kind in str(leaks[0])
