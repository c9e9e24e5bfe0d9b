"""The demo: one simulated edge host joins a (simulated) EKS cluster, live, in about a minute.

It starts a local Mosquitto, the project's test controller (devtools/controller.py), and
`edge-agent run` on a made-up host tree with the nodeadm stand-in (devtools/fakehost), then
prints what a fleet operator would see on the broker: phase changes, preflight check
results, nodeadm's progress lines and health. Once the host has joined it sends a signed
`ping` and `run-checks` from the controller's side, shows an unsigned command being refused,
and stops everything it started. Nothing here is the agent: it is a harness around it.

It ends with its results as one JSON document: the phases the host went through and how
long the join took, the commands and their outcomes, what `edge-agent status --json` said
after the stop, and how many messages each topic carried. With ``--json`` that document is
all it writes to stdout (the live view goes to stderr), for scripts. It needs only the agent
and cryptography (to sign commands): scripts/demo installs no test tools.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent.testing import sample_assignment
from devtools.broker import Mosquitto
from devtools.commander import Commander, Received
from devtools.controller import Controller
from devtools.fakehost.hosttree import install_fake_programs, make_host
from devtools.signer import CommandSigner

UID = "edge-demo-store-12"
ASSIGNMENT: dict[str, Any] = sample_assignment()
BOLD, DIM, GREEN, RED, YELLOW, CYAN, RESET = (
    "\033[1m",
    "\033[2m",
    "\033[32m",
    "\033[31m",
    "\033[33m",
    "\033[36m",
    "\033[0m",
)


class Screen:
    """Prints the host's MQTT traffic as it arrives, one readable line per message."""

    def __init__(self, color: bool, out: TextIO) -> None:
        self.color = color
        self.out = out
        self.start = time.monotonic()
        self.seen = 0
        self.health_shown = 0

    def c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def say(self, text: str) -> None:
        stamp = self.c(DIM, f"{time.monotonic() - self.start:6.1f}s")
        print(f"{stamp}  {text}", file=self.out, flush=True)

    def title(self, text: str) -> None:
        print(f"\n{self.c(BOLD, '== ' + text)}", file=self.out, flush=True)

    def text(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def pump(self, cmd: Commander) -> None:
        records = cmd.records()
        for r in records[self.seen :]:
            self.show(r)
        self.seen = len(records)

    def show(self, r: Received) -> None:
        m = r.json()
        if r.suffix == "availability":
            self.say(
                f"availability  {self.c(CYAN, m.get('state', '?'))} (session {m.get('session')})"
            )
        elif r.suffix == "events":
            self.event(m)
        elif r.suffix == "health" and self.health_shown < 6:
            self.health_shown += 1
            mem = m.get("memory", {})
            self.say(
                f"health        cpu {m.get('cpu_percent')}%  mem {mem.get('percent')}%  "
                f"kubelet {m.get('services', {}).get('kubelet')}  "
                f"healthz {m.get('kubelet_healthz')}"
            )
        elif r.suffix == "replies":
            state = m.get("state")
            color = GREEN if state == "succeeded" else RED if state == "rejected" else YELLOW
            err = m.get("error") or {}
            extra = f" {err.get('code')}: {err.get('message')}" if err else ""
            name = m.get("name") or "(unverified)"
            self.say(f"reply         {name} {self.c(color, str(state))}{extra}")

    def event(self, m: dict[str, Any]) -> None:
        t = m.get("type")
        if t == "phase":
            self.say(
                f"phase         {m.get('from')} -> {self.c(BOLD, str(m.get('to')))}  "
                f"{self.c(DIM, str(m.get('reason', '')))}"
            )
        elif t == "check":
            status = str(m.get("status"))
            color = {"pass": GREEN, "warn": YELLOW, "skip": DIM}.get(status, RED)
            self.say(
                f"check         {self.c(color, status.upper().ljust(4))} {m.get('id'):<22} "
                f"{m.get('message')}"
            )
        elif t == "nodeadm":
            fields = " ".join(f"{k}={v}" for k, v in (m.get("fields") or {}).items())
            self.say(f"nodeadm {m.get('step'):<6} {m.get('msg')} {self.c(DIM, fields)}")
        elif t in ("registration", "assignment", "error"):
            self.say(f"{t:<13} {m.get('message') or m.get('state')}")


def write_config(
    tmp: Path,
    broker: Mosquitto,
    ctl: Controller,
    programs: dict[str, str],
    pubkey: Path,
    token: Path,
) -> Path:
    cfg = {
        "host": {
            "uid": UID,
            "mode": "agent",
            "root": str(tmp / "host"),
            "labels": {"site": "store-12"},
        },
        "state_dir": str(tmp / "state"),
        "log": {"level": "info", "format": "json"},
        "controller": {
            "url": ctl.url,
            "registration_token_file": str(token),
            "assignment_poll_s": 2,
            "max_backoff_s": 5,
        },
        "mqtt": {
            "url": broker.url,
            "keepalive_s": 10,
            "health_interval_s": 8,
            "status_interval_s": 30,
            "max_backoff_s": 5,
        },
        "commands": {"public_key_file": str(pubkey)},
        "checks": {"min_free_disk_gb": 1},
        "nodeadm": {"config_path": str(tmp / "etc" / "nodeconfig.yaml"), "systemd_run": "never"},
        "health": {"kubelet_healthz_url": ctl.healthz_url},
        "programs": programs,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait(screen: Screen, cmd: Commander, pred: Any, timeout: float) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        screen.pump(cmd)
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    screen.pump(cmd)
    return pred()


def run(delay: float, keep: bool, as_json: bool) -> int:
    out = sys.stderr if as_json else sys.stdout
    screen = Screen(out.isatty(), out)
    results: dict[str, Any] = {"uid": UID, "joined": False, "commands": {}}
    tmp = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    screen.title("edge-agent demo: a simulated edge host becomes an EKS hybrid node")
    screen.text(
        "The host is a made-up directory tree and nodeadm is the project's stand-in; the\n"
        "broker (Mosquitto), the controller and the agent are real processes on loopback."
    )
    make_host(tmp / "host", hostname="store-12")
    programs = install_fake_programs(
        tmp / "bin", tmp / "host", env={"NODEADM_FAKE_DELAY": str(delay)}
    )
    signer = CommandSigner.generate()
    pubkey = signer.write_public_key(tmp / "controller-signing.pub")
    token = tmp / "registration-token"
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker").start()
    ctl = Controller(assignment=ASSIGNMENT).start()
    token.write_text(ctl.registration_token + "\n")
    token.chmod(0o600)
    cfg = write_config(tmp, broker, ctl, programs, pubkey, token)
    cmd = Commander(broker.port, uid=UID)
    cmd.wait_connected()
    agent: subprocess.Popen[bytes] | None = None
    log = (tmp / "agent.log").open("wb")
    rc = 1
    try:
        screen.title(f"starting the agent (uid {UID}); controller {ctl.url}, broker {broker.url}")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if _join(screen, cmd, results):
            _commands(screen, cmd, signer, results)
            rc = _stop(screen, cmd, agent, cfg, results)
        else:
            screen.say(screen.c(RED, "the host did not join; agent log: " + str(tmp / "agent.log")))
            keep = True
            results["agent_log"] = str(tmp / "agent.log")
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(5)
        log.close()
        cmd.close()
        ctl.stop()
        broker.stop()
        if keep:
            screen.text(f"\nkept the demo's files in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    screen.title("what was simulated")
    screen.text(
        "The host tree and nodeadm were stand-ins, so no kubelet was installed. To run the\n"
        "agent on a real host: install it (packaging/README.md), write\n"
        "/etc/edge-agent/config.yaml from config.example.yaml (controller URL, registration\n"
        "token, broker URL, the controller's signing key), then `systemctl enable --now\n"
        "edge-agent`. `edge-agent check` tells what the host still lacks."
    )
    if not as_json:
        screen.title("results (JSON)")
    results["ok"] = rc == 0
    print(json.dumps(results, indent=1), flush=True)
    return rc


def _join(screen: Screen, cmd: Commander, results: dict[str, Any]) -> bool:
    started = time.monotonic()
    joined = wait(
        screen,
        cmd,
        lambda: any(e.get("to") == "joined" for e in cmd.events("phase")),
        90,
    )
    results["phases"] = [e.get("to") for e in cmd.events("phase")]
    if joined:
        results["joined"] = True
        results["join_s"] = round(time.monotonic() - started, 2)
        wait(screen, cmd, lambda: len(cmd.health()) >= 2, 15)
    return bool(joined)


def _commands(
    screen: Screen, cmd: Commander, signer: CommandSigner, results: dict[str, Any]
) -> None:
    screen.title("signed commands from the controller's side")
    ping = signer.envelope("ping", uid=UID)
    cmd.send(ping)
    reply = wait(screen, cmd, lambda: cmd.final_reply(ping["id"], timeout=0), 10)
    if reply:
        screen.say(f"ping result   {reply.get('result')}")
    results["commands"]["ping"] = _outcome(reply)
    checks = signer.envelope("run-checks", uid=UID)
    cmd.send(checks)
    reply = wait(screen, cmd, lambda: cmd.final_reply(checks["id"], timeout=0), 30)
    if reply and reply.get("result"):
        screen.say(f"run-checks    summary {reply['result'].get('summary')}")
    results["commands"]["run-checks"] = _outcome(reply)
    forged = signer.envelope("uninstall", uid=UID, sign=False)
    screen.say("sending an UNSIGNED uninstall, as an attacker on the broker would ...")
    cmd.send(forged)
    reply = wait(screen, cmd, lambda: cmd.final_reply(forged["id"], timeout=0), 10)
    results["commands"]["unsigned uninstall"] = _outcome(reply)


def _stop(
    screen: Screen,
    cmd: Commander,
    agent: subprocess.Popen[bytes],
    cfg: Path,
    results: dict[str, Any],
) -> int:
    screen.title("clean stop (SIGTERM)")
    agent.send_signal(signal.SIGTERM)
    agent.wait(20)
    wait(screen, cmd, lambda: any(a.get("state") == "offline" for a in cmd.availability()), 5)
    screen.say(f"agent exited with {agent.returncode}")
    results["agent_exit_code"] = agent.returncode
    st = _status(cfg)
    screen.title("edge-agent status (read from the state directory)")
    screen.text(st.stdout.rstrip())
    results["status"] = json.loads(_status(cfg, "--json").stdout)
    results["status_exit_code"] = st.returncode
    topics = ("availability", "status", "health", "events", "replies")
    results["messages"] = {t: len(cmd.records(t)) for t in topics}
    return 0 if agent.returncode == 0 else 1


def _outcome(reply: dict[str, Any] | None) -> dict[str, Any]:
    if reply is None:
        return {"state": None}
    err = reply.get("error") or {}
    return {"state": reply.get("state"), "error": err.get("code"), "result": reply.get("result")}


def _status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        check=False,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--delay",
        type=float,
        default=2.0,
        help="seconds per nodeadm step (real installs take minutes)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary files")
    p.add_argument(
        "--json", action="store_true", help="only the results on stdout (the live view on stderr)"
    )
    args = p.parse_args()
    return run(args.delay, args.keep, args.json)


if __name__ == "__main__":
    sys.exit(main())
