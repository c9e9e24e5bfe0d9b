"""A reload reaches the parts that own each setting (SIGHUP), and the command key is watched
even without one: a real agent, a real broker, commands signed by the test's controller."""

from __future__ import annotations

import signal

from devtools.signer import CommandSigner
from tests.e2e.conftest import Site, SiteFactory


def sighup(s: Site) -> None:
    assert s.host.proc is not None
    before = s.host.output().count("config.reloaded")
    s.host.proc.send_signal(signal.SIGHUP)
    s.host.wait_for(lambda: s.host.output().count("config.reloaded") > before, 15)


def ping_with(s: Site, signer: CommandSigner) -> dict[str, object]:
    env = signer.envelope("ping", uid=s.uid)
    s.cmd.send(env)
    reply = s.cmd.final_reply(str(env["id"]), 20)
    assert reply is not None, s.host.output()[-3000:]
    return reply


def test_sighup_with_a_new_key_file_refuses_the_old_key(site_factory: SiteFactory) -> None:
    s = site_factory()
    s.host.wait_phase("joined", 40)
    old = s.signer
    assert ping_with(s, old)["state"] == "succeeded"
    assert not [x for x in s.host.log_lines() if x.get("level") == "debug"]
    new = CommandSigner.generate()
    key = new.write_public_key(s.tmp / "rotated-signing.pub")
    s.host.config["commands"]["public_key_file"] = str(key)
    s.host.config["log"]["level"] = "debug"
    s.host.config["mqtt"]["keepalive_s"] = 3
    s.host.write_config()
    sighup(s)

    refused = ping_with(s, old)
    assert refused["state"] == "rejected"
    assert refused["error"]["code"] == "bad_signature"
    assert ping_with(s, new)["state"] == "succeeded"
    # The event says what was applied and what waits for a restart.
    ev = s.cmd.wait_for(lambda: s.cmd.events("config"), 10)
    assert ev[-1]["state"] == "reloaded"
    assert set(ev[-1]["live"]) == {"commands", "log.level"}
    assert ev[-1]["needs_restart"] == ["mqtt"]
    assert any(e["code"] == "config_needs_restart" for e in s.cmd.events("error"))
    # log.level was applied: the checks' debug lines now appear.
    s.signer = new
    assert s.run("run-checks", timeout=30)["state"] in ("succeeded", "failed")
    assert [x for x in s.host.log_lines() if x.get("event") == "check.done"]
    assert s.host.stop() == 0


def test_a_key_file_overwritten_in_place_takes_effect_without_reload(
    site_factory: SiteFactory,
) -> None:
    s = site_factory()
    s.host.wait_phase("joined", 40)
    old = s.signer
    assert ping_with(s, old)["state"] == "succeeded"
    new = CommandSigner.generate()
    key_path = s.tmp / "controller-signing.pub"
    inode = key_path.stat().st_ino
    key_path.write_bytes(new.public_pem())  # same path, same inode: no rename, no SIGHUP
    assert key_path.stat().st_ino == inode

    refused = ping_with(s, old)
    assert refused["state"] == "rejected"
    assert refused["error"]["code"] == "bad_signature"
    assert ping_with(s, new)["state"] == "succeeded"
    assert "commands.key_reloaded" in s.host.output()
    assert "config.reloaded" not in s.host.output()
    assert s.host.stop() == 0


def test_a_reload_to_an_unusable_key_is_refused_and_the_old_key_kept(
    site_factory: SiteFactory,
) -> None:
    s = site_factory()
    s.host.wait_phase("joined", 40)
    bad = s.tmp / "not-a-key.pub"
    bad.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@laptop\n")
    s.host.config["commands"]["public_key_file"] = str(bad)
    s.host.write_config()
    assert s.host.proc is not None
    s.host.proc.send_signal(signal.SIGHUP)
    s.host.wait_for(lambda: "config.reload_refused" in s.host.output(), 15)
    assert "OpenSSH" in s.host.output()
    assert ping_with(s, s.signer)["state"] == "succeeded"
    assert s.host.stop() == 0


def test_command_limits_wait_for_a_restart_and_say_so(site_factory: SiteFactory) -> None:
    """commands.max_bytes is also the MQTT session's maximum packet size, which the broker
    takes only when the agent connects: a reload that raised it would let the dispatcher
    accept what the broker still drops. It is reported as needing a restart, and the limit
    in force stays whole."""
    s = site_factory(config={"commands": {"max_bytes": 4096}})
    s.host.wait_phase("joined", 40)
    s.host.config["commands"]["max_bytes"] = 65536
    s.host.write_config()
    sighup(s)
    ev = s.cmd.wait_for(lambda: s.cmd.events("config"), 10)
    assert ev[-1]["live"] == [] and ev[-1]["needs_restart"] == ["commands.max_bytes"]
    restart = [e for e in s.cmd.events("error") if e["code"] == "config_needs_restart"]
    assert restart and "commands.max_bytes" in restart[-1]["message"]
    # Larger than the limit in force, within what the broker lets through (limit + 1 KiB).
    big = b'{"id":"big-after-reload","name":"ping","args":{"pad":"' + b"x" * 4500 + b'"}}'
    s.cmd.publish("commands", big)
    reply = s.cmd.final_reply("big-after-reload", 10)
    assert reply and reply["state"] == "rejected" and reply["error"]["code"] == "too_large"
    # A later reload of something else still names the restart that is waiting...
    s.host.config["log"]["level"] = "debug"
    s.host.write_config()
    sighup(s)
    assert s.cmd.wait_for(lambda: len(s.cmd.events("config")) >= 2, 10)
    ev = s.cmd.events("config")
    assert ev[-1]["live"] == ["log.level"] and ev[-1]["needs_restart"] == ["commands.max_bytes"]
    # ...and once the setting is back at what the agent started with, nothing waits.
    s.host.config["commands"]["max_bytes"] = 4096
    s.host.write_config()
    sighup(s)
    assert s.cmd.wait_for(lambda: len(s.cmd.events("config")) >= 3, 10)
    ev = s.cmd.events("config")
    assert ev[-1]["live"] == [] and ev[-1]["needs_restart"] == []
    assert s.host.stop() == 0
