"""The one redaction rule, as tables: which keys are secret by name, which secrets are struck
out of text (longest first, none shorter than MIN_SECRET_LEN), and how JSON-like values are
walked. Each surface that shows something (log lines, nodeadm events, controller errors,
config and NodeConfig dumps) has its own test beside its other tests, hiding the same secret
the same way."""

from __future__ import annotations

import json

import pytest

from agent.core.config import parse_config
from agent.core.nodeconfig import redact_nodeconfig
from agent.core.redact import (
    MIN_SECRET_LEN,
    REDACTED,
    is_secret_key,
    scrub,
    scrub_text,
    usable_secrets,
)

CODE = "EXAMPLEactivationCode01"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("activation_code", True),
        ("activationCode", True),
        ("X-Activation-Code", True),
        ("token", True),
        ("host_token", True),
        ("registrationToken", True),
        ("Authorization", True),
        ("proxy-authorization", True),
        ("password", True),
        ("client_secret", True),
        ("private_key", True),
        ("aws_secret_access_key", True),
        # Where a secret lives, or what it is called, is not the secret.
        ("password_file", False),
        ("registration_token_file", False),
        ("privateKeyPath", False),
        ("activationId", False),
        ("tokens_left", False),
        ("text", False),
        ("", False),
        (7, False),
        (None, False),
    ],
)
def test_secret_named_keys(key: object, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    ("text", "secrets", "shown"),
    [
        ("code EXAMPLEactivationCode01 rejected", [CODE], f"code {REDACTED} rejected"),
        (f"{CODE}{CODE}", [CODE], REDACTED * 2),
        # Longest first: a secret holding another is not left half visible.
        ("Bearer abcdefgh12345 and abcdefgh", ["abcdefgh", "abcdefgh12345"],
         f"Bearer {REDACTED} and {REDACTED}"),
        # Too short to strike out: it would mangle ordinary words.
        ("a b c", ["b"], "a b c"),
        ("pass the salt", ["pass", "salt"], "pass the salt"),
        ("seven77 is short", ["seven77"], "seven77 is short"),
        ("eight888 is not", ["eight888"], f"{REDACTED} is not"),
        # Surrounding whitespace is not part of a secret (a token file ends in a newline).
        (f"token {CODE}.", [f"  {CODE}\n"], f"token {REDACTED}."),
        ("nothing here", [], "nothing here"),
        ("", [CODE], ""),
        ("blank secrets are ignored", ["", "   "], "blank secrets are ignored"),
    ],
)  # fmt: skip
def test_scrub_text(text: str, secrets: list[str], shown: str) -> None:
    assert scrub_text(text, secrets) == shown


def test_usable_secrets_are_long_enough_unique_and_longest_first() -> None:
    assert MIN_SECRET_LEN == 8
    found = usable_secrets(["abcdefgh", "short", "abcdefgh12345", "abcdefgh", " x "])
    assert found == ("abcdefgh12345", "abcdefgh")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (f"said {CODE}", f"said {REDACTED}"),
        (
            {"msg": f"bad {CODE}", "activationCode": CODE, "n": 3},
            {"msg": f"bad {REDACTED}", "activationCode": REDACTED, "n": 3},
        ),
        # A secret-named key is masked whatever it holds, short, empty or nested.
        ({"token": "abc"}, {"token": REDACTED}),
        ({"password": ""}, {"password": REDACTED}),
        ({"auth": {"Authorization": {"scheme": "Bearer"}}}, {"auth": {"Authorization": REDACTED}}),
        ([{"host_token": 42}, [CODE]], [{"host_token": REDACTED}, [REDACTED]]),
        ((CODE, "ok"), [REDACTED, "ok"]),
        ({1: CODE}, {1: REDACTED}),
        (None, None),
        (12.5, 12.5),
        (True, True),
    ],
)
def test_scrub_walks_json_like_values(value: object, shown: object) -> None:
    assert scrub(value, [CODE]) == shown


def test_secret_named_keys_are_masked_without_any_known_secret() -> None:
    assert scrub({"nested": {"registration_token": "t"}}, []) == {
        "nested": {"registration_token": REDACTED}
    }


def test_scrub_returns_a_copy() -> None:
    original = {"list": [CODE], "inner": {"token": "t"}}
    shown = scrub(original, [CODE])
    assert original == {"list": [CODE], "inner": {"token": "t"}}
    assert shown == {"list": [REDACTED], "inner": {"token": REDACTED}}


def test_a_secret_named_key_is_masked_in_the_config_dump_as_everywhere_else() -> None:
    cfg = parse_config(
        {
            "assignment_file": "/etc/edge-agent/assignment.yaml",
            "host": {"labels": {"site": "store-12", "registration-token": "abc"}},
            "mqtt": {"url": "mqtts://broker:8883", "username": "host-7"},
            "commands": {"allow_unsigned": True},
        }
    )
    shown = cfg.redacted()
    host, mqtt = shown["host"], shown["mqtt"]
    assert isinstance(host, dict) and isinstance(mqtt, dict)
    assert host["labels"] == {"site": "store-12", "registration-token": REDACTED}
    assert mqtt["username"] == "<set>"
    assert "abc" not in json.dumps(shown)


def test_a_secret_named_key_is_masked_in_the_nodeconfig_dump_as_everywhere_else() -> None:
    doc = {"spec": {"hybrid": {"ssm": {"activationCode": CODE, "activationId": "id-1"}}}}
    assert redact_nodeconfig(doc) == {
        "spec": {"hybrid": {"ssm": {"activationCode": REDACTED, "activationId": "id-1"}}}
    }
    assert doc["spec"]["hybrid"]["ssm"]["activationCode"] == CODE
