"""A whole site on loopback for end-to-end tests: broker, controller, signer, host, agent.

`site_factory(...)` builds, in `tmp_path`: a real Mosquitto, the devtools controller (with
this host's assignment), a `CommandSigner` whose public key is the agent's
`commands.public_key_file`, a registration token file, a `HostEnv` configured with the
controller and the broker (short keepalive, health and poll intervals, 1 s backoff caps),
and a `Commander` subscribed to the host's topics. Every site has its own UID and topic
prefix. Teardown stops the agent (killing its process group if SIGTERM is not enough),
ends any nodeadm stand-in left running, and stops the commander, controller and broker,
whatever state the test left them in; then every message the agent published is checked
against the published schemas of docs/api, so a drift fails the test that caused it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.testing import sample_assignment
from devtools.broker import Mosquitto
from devtools.commander import Commander
from devtools.controller import Controller
from devtools.fakehost import layout
from devtools.signer import CommandSigner
from tests.api.schemas import mqtt_drift
from tests.support import HostEnv, stop_all_started

REGISTRATION_TOKEN_PREFIX = "regtoken-"


@dataclass
class Site:
    """One host and everything it talks to; see the module docstring."""

    tmp: Path
    uid: str
    prefix: str
    broker: Mosquitto
    controller: Controller
    signer: CommandSigner
    token_file: Path
    host: HostEnv
    commander: Commander | None = None
    persistent_commander: bool = False
    _commanders: list[Commander] = field(default_factory=list)

    # ---- the controller's side over MQTT ----------------------------------------------------
    @property
    def cmd(self) -> Commander:
        assert self.commander is not None, "no commander: the broker was down at build time"
        return self.commander

    def connect_commander(self) -> Commander:
        """(Re)connect a commander to the host's topics (the broker must be up)."""
        c = Commander(
            self.broker.port,
            uid=self.uid,
            prefix=self.prefix,
            persistent=self.persistent_commander,
            client_id=f"cmdr-{self.uid}" if self.persistent_commander else None,
            keepalive=5,
        )
        self._commanders.append(c)
        self.commander = c
        return c

    def envelope(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        kw.setdefault("uid", self.uid)
        return self.signer.envelope(name, args, **kw)

    def send(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> str:
        env = self.envelope(name, args, **kw)
        self.cmd.send(env)
        return str(env["id"])

    def run(
        self, name: str, args: dict[str, Any] | None = None, timeout: float = 20, **kw: Any
    ) -> dict[str, Any]:
        """Send a signed command and return its final reply (failing the test without one)."""
        cid = self.send(name, args, **kw)
        reply = self.cmd.final_reply(cid, timeout)
        assert reply is not None, (
            f"no final reply to {name} ({cid}) within {timeout}s\n" + (self.host.output()[-3000:])
        )
        return reply

    # ---- the agent -----------------------------------------------------------------------------
    def start(self) -> None:
        self.host.start()

    def wait_status(self, pred: Callable[[dict[str, Any]], Any], timeout: float = 20) -> Any:
        """Poll `edge-agent status --json` until `pred(status)` holds; return that status."""
        end = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < end:
            st = self.host.status()
            if st and pred(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"status never matched; last {st}\n{self.host.output()[-3000:]}")

    def secrets(self) -> list[str]:
        """Every secret this site has handed out: activation code, tokens."""
        out = [self.token_file.read_text().strip(), self.controller.registration_token]
        ht = self.controller.host_token(self.uid)
        if ht:
            out.append(ht)
        a = self.controller.assignment_for(self.uid)
        if a and a.get("ssm"):
            out.append(a["ssm"]["activation_code"])
        return [s for s in out if s]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.host.stop(timeout=10)
        _end_nodeadm(self.host.root)
        for c in self._commanders:
            with contextlib.suppress(Exception):
                c.close()
        with contextlib.suppress(Exception):
            self.controller.stop()
        with contextlib.suppress(Exception):
            self.broker.stop()


def _end_nodeadm(root: Path) -> None:
    """Kill whatever nodeadm stand-in a test left hanging (it runs in its own session)."""
    run_dir = layout.under(root, layout.RUN_DIR)
    for pid_file in run_dir.glob("nodeadm-*.pid") if run_dir.is_dir() else []:
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


SiteFactory = Callable[..., Site]


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[SiteFactory]:
    sites: list[Site] = []

    def build(
        *,
        start: bool = True,
        broker_up: bool = True,
        persistence: bool = False,
        persistent_commander: bool = False,
        host_assignment: dict[str, Any] | None = None,
        no_assignment: bool = False,
        token: str | None = None,
        nodeadm_env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        host: dict[str, Any] | None = None,
        name: str = "site",
    ) -> Site:
        tmp = tmp_path / name
        tmp.mkdir()
        tag = uuid.uuid4().hex[:10]
        uid = f"edge-{tag}"
        prefix = f"t{tag}/edge/v1"
        # Mosquitto keeps at most 1,000 QoS 1 messages queued per client (its default) and
        # drops the rest, logging only "Outgoing messages are being dropped": a commander
        # that falls behind a flood of replies would lose some. A controller's subscriber
        # needs a deeper queue in production too (docs/broker.md).
        broker = Mosquitto(tmp / "broker", persistence=persistence, max_queued_messages=100_000)
        broker.directory.mkdir()
        broker.start()
        controller = Controller(registration_token=f"{REGISTRATION_TOKEN_PREFIX}{tag}").start()
        if not no_assignment:
            controller.set_assignment(uid, host_assignment or sample_assignment())
        else:
            controller.set_assignment(uid, None)
        signer = CommandSigner.generate()
        key = signer.write_public_key(tmp / "controller-signing.pub")
        token_file = tmp / "registration-token"
        token_file.write_text((token or controller.registration_token) + "\n")
        token_file.chmod(0o600)
        cfg: dict[str, Any] = {
            "controller": {
                "url": controller.url,
                "registration_token_file": str(token_file),
                "timeout_s": 3,
                "max_backoff_s": 1,
                "assignment_poll_s": 1,
            },
            "mqtt": {
                "url": broker.url,
                "topic_prefix": prefix,
                "keepalive_s": 2,
                "health_interval_s": 1,
                "status_interval_s": 5,
                "max_backoff_s": 1,
            },
            "commands": {"public_key_file": str(key)},
        }
        for k, v in (config or {}).items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
        h = HostEnv(tmp, uid=uid, nodeadm_env=nodeadm_env, config=cfg, host=host)
        site = Site(tmp, uid, prefix, broker, controller, signer, token_file, h)
        site.persistent_commander = persistent_commander
        sites.append(site)
        site.connect_commander()
        if not broker_up:
            broker.stop()
        if start:
            site.start()
        return site

    yield build
    for s in sites:
        s.close()
    drift = [p for s in sites for c in s._commanders for p in mqtt_drift(*c.history())]
    if drift:
        pytest.fail(
            "the agent published messages docs/api does not describe:\n  "
            + "\n  ".join(drift[:20]),
            pytrace=False,
        )


@pytest.fixture
def site(site_factory: SiteFactory) -> Site:
    """The default site, agent started: it registers and joins by itself."""
    return site_factory()


@pytest.fixture(autouse=True)
def _stop_leftover_agents() -> Iterator[None]:
    """A test that fails half-way must not leave its agent (or a hung nodeadm) running."""
    yield
    stop_all_started()
