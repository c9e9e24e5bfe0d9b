"""Fault injection on the command path (docs/controller.md): whatever arrives on `…/commands`, the
dispatcher never crashes and every payload is answered, with a reply or an `error` event.

The real `Dispatcher`, a real `CommandLedger` in a temporary directory, real Ed25519
verification (`agent.commands.signature`, a key made by `cryptography`), the real command
table (`build_specs`) over a small `AgentOps` of our own. Payloads come in batches handed to
the dispatcher back to back, so commands overlap (`busy`, `cancel`, duplicates of a running
id) before the batch's commands are run to their end. Properties, per payload: exactly one
immediate answer (a reply carrying its id, or an error event); a command accepted gets
exactly one final reply, not `internal_error`; no `command_failed` (the dispatcher's own
crash) ever.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.commands.dispatcher import FINAL, CommandFailed, Dispatcher, Progress
from agent.commands.handlers import build_specs
from agent.commands.ledger import CommandLedger
from agent.commands.signature import load_public_key
from agent.core.envelope import REJECTION_ORDER
from agent.logs import LevelHolder, make_logger
from agent.state.clock import NeverBackwardsClock
from devtools.signer import CommandSigner, iso, new_command_id

UID = "edge-fuzz-1"
MAX_BYTES = 2048
NAMES = (
    "ping",
    "get-status",
    "run-checks",
    "refresh-package-index",
    "sync-assignment",
    "join",
    "upgrade",
    "uninstall",
    "nodeadm-debug",
    "collect-diagnostics",
    "set-log-level",
    "cancel",
)
ARG_KEYS = ("only", "kubernetes_version", "drained", "force", "level", "command_id", "upload")
CHECK_IDS = ("system.swap", "network.cidrs", "os.supported")
# A small pool, so ids repeat within a batch and across examples (the ledger is shared).
ID_POOL = tuple(f"fuzz-{n}" for n in range(6))
REJECT_CODES = frozenset(REJECTION_ORDER)
# ~2,400 payloads in all across the three properties (batches of 1-4).
FUZZ = settings(
    max_examples=350,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class FuzzOps:
    """The agent side of the commands: quick, deterministic, and able to fail on cue."""

    agent_version = "0.0.0-fuzz"

    def __init__(self) -> None:
        self.dispatcher: Dispatcher | None = None
        self.level = "info"

    def uptime_s(self) -> int:
        return 7

    def status(self) -> dict[str, Any]:
        return {"uid": UID, "phase": "joined"}

    def check_ids(self) -> tuple[str, ...]:
        return CHECK_IDS

    async def run_checks_now(self, only: list[str] | None) -> list[Any]:
        await asyncio.sleep(0)
        return []

    async def refresh_package_index(self) -> dict[str, Any]:
        return {"manager": "apt", "duration_s": 0.0}

    async def sync_assignment(self) -> dict[str, Any]:
        return {"revision": 3}

    async def join(self, progress: Progress) -> dict[str, Any]:
        progress(30, "installing")
        for _ in range(4):  # long enough for the next payloads to find it running
            await asyncio.sleep(0)
        progress(70, "joining")
        await asyncio.sleep(0)
        return {"kubernetes_version": "1.31", "node_name": "mi-0123456789abcdef0"}

    async def upgrade(self, version: str, drained: bool, progress: Progress) -> dict[str, Any]:
        for _ in range(4):
            await asyncio.sleep(0)
        if not drained:
            raise CommandFailed("awaiting_drain", "the node is not drained")
        return {"kubernetes_version": version}

    async def uninstall(self, force: bool, drained: bool, progress: Progress) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {}

    async def nodeadm_debug(self) -> dict[str, Any]:
        return {"ok": True, "items": []}

    async def collect_diagnostics(self, upload: bool, progress: Progress) -> dict[str, Any]:
        progress(10, "collecting")
        await asyncio.sleep(0)
        return {"bundle_id": "b1", "bytes": 10, "sha256": "0" * 64, "uploaded": upload}

    def set_log_level(self, level: str) -> None:
        self.level = level

    def cancel_command(self, command_id: str) -> bool:
        assert self.dispatcher is not None
        return self.dispatcher.cancel(command_id)

    def cancel_lifecycle_work(self) -> None:
        pass


@dataclass
class Answer:
    payload: bytes
    replies: list[dict[str, Any]] = field(default_factory=list)  # immediate ones
    errors: list[tuple[str, str]] = field(default_factory=list)


class Harness:
    """A signer and an event loop shared by the examples of a test; each batch gets a fresh
    dispatcher and ledger (in a directory of its own), so an example replays identically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.signer = CommandSigner.generate()
        self.verifier = load_public_key(self.signer.public_pem())
        self.loop = asyncio.new_event_loop()
        self.batches = 0

    def close(self) -> None:
        self.loop.close()

    def feed(self, payloads: list[bytes]) -> None:
        """Hand the batch to a new dispatcher, run it to the end, check every invariant."""
        self.batches += 1
        where = self.directory / str(self.batches)
        where.mkdir()
        clock = NeverBackwardsClock(where / "clock", persist_every_s=60)
        ledger = CommandLedger(where / "commands.ledger", clock)
        replies: list[dict[str, Any]] = []
        errors: list[tuple[str, str]] = []
        ops = FuzzOps()
        dispatcher = Dispatcher(
            uid=UID,
            specs=build_specs(ops),
            ledger=ledger,
            now=clock.now,
            max_bytes=MAX_BYTES,
            max_skew_s=300,
            max_ttl_s=3600,
            verify=self.verifier.verify,
            allow_unsigned=False,
            send_reply=replies.append,
            send_error=lambda code, msg: errors.append((code, msg)),
            external_busy=lambda: None,
            log=make_logger(level=LevelHolder("error"), fmt="json", stream=io.StringIO()),
        )
        ops.dispatcher = dispatcher
        try:
            answers = self.loop.run_until_complete(
                asyncio.wait_for(_feed(dispatcher, payloads, replies, errors), 10)
            )
        finally:
            self.loop.run_until_complete(dispatcher.close())
            ledger.close()
        check(answers, replies, errors)


async def _feed(
    dispatcher: Dispatcher,
    payloads: list[bytes],
    replies: list[dict[str, Any]],
    errors: list[tuple[str, str]],
) -> list[Answer]:
    answers = []
    for payload in payloads:
        r0, e0 = len(replies), len(errors)
        await dispatcher.handle(payload)
        answers.append(Answer(payload, replies[r0:], errors[e0:]))
        # The command just accepted starts (up to its first await) before the next payload
        # arrives: overlapping commands (busy, cancel of a running one) are covered, and a
        # cancel never lands on a command that has not started, a known bug covered on its
        # own below (test_a_cancel_that_lands_before_its_command_starts...).
        await asyncio.sleep(0)
    tasks = [r.task for r in dispatcher.running.values() if r.task is not None]
    while tasks:
        await asyncio.wait(tasks)
        tasks = [r.task for r in dispatcher.running.values() if r.task and not r.task.done()]
    assert not dispatcher.running, f"commands that never finished: {list(dispatcher.running)}"
    return answers


def check(answers: list[Answer], replies: list[dict[str, Any]], errors: list[Any]) -> None:
    """Per payload: one immediate answer; per accepted command, one final reply of its own.

    Ids are not unique across payloads: an unverified message may carry a real command's id
    (it is rejected without entering the ledger, docs/controller.md), so a command's final reply is
    one that is not the immediate answer of another payload.
    """
    assert not [e for e in errors if e[0] == "command_failed"], f"dispatcher crashed: {errors}"
    immediate = {id(r) for a in answers for r in a.replies}
    for a in answers:
        assert len(a.replies) + len(a.errors) == 1, (
            f"{a.payload[:200]!r} answered by {a.replies} and {a.errors}"
        )
        if a.errors:
            event(f"error event {a.errors[0][0]}")
            assert a.errors[0][0] in REJECT_CODES, a.errors
            continue
        reply = a.replies[0]
        assert reply["uid"] == UID and isinstance(reply["command_id"], str)
        assert reply["command_id"].encode() in a.payload or reply["command_id"] in json.dumps(
            a.payload.decode("utf-8", "replace")
        )
        if reply["duplicate"]:
            event("duplicate")
            continue
        if reply["state"] == "rejected":
            event(f"rejected {reply['error']['code']}")
            assert reply["error"]["code"] in REJECT_CODES, reply
            continue
        assert reply["state"] == "accepted", reply
        finals = [
            r
            for r in replies
            if r["command_id"] == reply["command_id"]
            and r["state"] in FINAL
            and not r["duplicate"]
            and id(r) not in immediate
        ]
        assert len(finals) == 1, f"{reply['command_id']}: final replies {finals}"
        event(f"{reply['name']} {finals[0]['state']}")
        assert (finals[0]["error"] or {}).get("code") != "internal_error", finals[0]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz-dispatcher"))
    yield h
    h.close()


# ---- strategies ------------------------------------------------------------------------------

SAFE_INT = st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
SCALARS = st.none() | st.booleans() | SAFE_INT | st.text(max_size=24)
JSON_VALUES = st.recursive(
    SCALARS | st.sampled_from(CHECK_IDS) | st.sampled_from(("1.31", "1.32.1", "debug", "x")),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
ARGS = st.dictionaries(st.sampled_from(ARG_KEYS) | st.text(max_size=10), JSON_VALUES, max_size=3)
# Mostly readable ids (a pool that repeats, fresh ULIDs), some anything at all.
IDS = st.one_of(
    st.sampled_from(ID_POOL),
    st.builds(new_command_id),
    st.builds(new_command_id),
    st.sampled_from(ID_POOL),
    st.text(max_size=70),
)
# Arguments each command accepts, give or take a bad value, so commands run and collide.
GOOD_ARGS = {
    "upgrade": st.fixed_dictionaries(
        {
            "kubernetes_version": st.sampled_from(("1.32", "1.31.2", "v1.32", "")),
            "drained": st.booleans(),
        }
    ),
    "set-log-level": st.fixed_dictionaries(
        {"level": st.sampled_from(("debug", "info", "warning", "error", "trace"))}
    ),
    "run-checks": st.fixed_dictionaries(
        {}, optional={"only": st.lists(st.sampled_from((*CHECK_IDS, "no.such")), max_size=3)}
    ),
    "uninstall": st.fixed_dictionaries(
        {}, optional={"force": st.booleans(), "drained": st.booleans()}
    ),
    "collect-diagnostics": st.fixed_dictionaries({}, optional={"upload": st.booleans()}),
    "cancel": st.fixed_dictionaries({"command_id": st.sampled_from(ID_POOL)}),
}


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    now = time.time()
    issued = now + draw(st.sampled_from((0.0, 0.0, 0.0, -10.0, -7200.0, 3600.0)))
    ttl = draw(st.sampled_from((600.0, 600.0, 30.0, -5.0, 0.0, 99999.0)))
    return {
        "id": draw(IDS),
        "name": draw(st.sampled_from(NAMES) | st.text(max_size=16)),
        "args": draw(ARGS),
        "uid": draw(st.sampled_from((UID, UID, UID, "edge-other"))),
        "issued_at": iso(issued),
        "expires_at": iso(issued + ttl),
    }


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def signed_commands(draw: st.DrawFn, signer: CommandSigner) -> bytes:
    """Validly signed; names, args, ids and windows at random, mostly good ones."""
    env = draw(envelopes())
    if draw(st.integers(0, 3)):  # three in four: a command that should run
        env["id"] = draw(st.sampled_from(ID_POOL) | st.builds(new_command_id))
        env["name"] = draw(st.sampled_from(NAMES))
        env["args"] = draw(GOOD_ARGS.get(env["name"], st.just({})))
        env["uid"] = UID
        now = time.time()
        env["issued_at"], env["expires_at"] = iso(now), iso(now + 600)
    return _encode(signer.sign(env))


@st.composite
def hostile(draw: st.DrawFn, signer: CommandSigner) -> bytes:
    """Unsigned, tampered, re-encoded, random JSON, random bytes, oversized."""
    kind = draw(
        st.sampled_from(("bytes", "json", "unsigned", "tampered", "bad_sig", "big", "float"))
    )
    event(f"payload {kind}")
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return _encode(draw(JSON_VALUES))
    env = draw(envelopes())
    if kind == "unsigned":
        return _encode(env)
    signed = signer.sign(env)
    if kind == "tampered":
        field_ = draw(st.sampled_from(("id", "name", "args", "uid", "expires_at")))
        signed[field_] = draw(
            {"id": IDS, "name": st.sampled_from(NAMES), "args": ARGS}.get(
                field_, st.text(max_size=30)
            )
        )
        return _encode(signed)
    if kind == "bad_sig":
        raw = bytearray(base64.b64decode(signed["sig"]))
        raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
        signed["sig"] = draw(
            st.sampled_from(
                (base64.b64encode(bytes(raw)).decode(), signed["sig"][:-4], signed["sig"] + "!", "")
            )
        )
        return _encode(signed)
    if kind == "float":
        signed["args"] = {"drained": 1.5}
        return _encode(signed)
    # Oversized: padding after the id, so the id can (or, past 256 bytes, cannot) be sniffed.
    pad = "x" * draw(st.integers(MAX_BYTES, MAX_BYTES + 200))
    head = {"id": signed["id"]} if draw(st.booleans()) else {"pad0": "y" * 300, "id": signed["id"]}
    return _encode({**head, **{k: v for k, v in signed.items() if k != "id"}, "pad": pad})


# ---- properties ---------------------------------------------------------------------------


def test_signed_commands_with_random_names_and_args_end_in_one_final_reply(
    harness: Harness,
) -> None:
    @FUZZ
    @given(st.lists(signed_commands(harness.signer), min_size=1, max_size=4))
    def prop(batch: list[bytes]) -> None:
        harness.feed(batch)

    prop()


def test_hostile_payloads_are_answered_and_never_crash_the_dispatcher(harness: Harness) -> None:
    @FUZZ
    @given(st.lists(hostile(harness.signer), min_size=1, max_size=3))
    def prop(batch: list[bytes]) -> None:
        harness.feed(batch)

    prop()


def test_hostile_and_valid_payloads_interleaved(harness: Harness) -> None:
    @FUZZ
    @given(
        st.lists(signed_commands(harness.signer) | hostile(harness.signer), min_size=2, max_size=4)
    )
    def prop(batch: list[bytes]) -> None:
        harness.feed(batch)

    prop()


def test_the_fuzz_checks_can_fail() -> None:
    """The invariants are not vacuous: a dispatcher that answered twice, or not at all, or
    gave an accepted command no final reply, is caught."""
    accepted = {"command_id": "a", "uid": UID, "state": "accepted", "duplicate": False}
    accepted |= {"name": "ping", "error": None}
    with pytest.raises(AssertionError, match="answered by"):
        check([Answer(b'{"id":"a"}')], [], [])
    with pytest.raises(AssertionError, match="answered by"):
        check([Answer(b'{"id":"a"}', [accepted], [("bad_json", "x")])], [accepted], [])
    with pytest.raises(AssertionError, match="final replies"):
        check([Answer(b'{"id":"a"}', [accepted])], [accepted], [])
    with pytest.raises(AssertionError, match="dispatcher crashed"):
        check([], [], [("command_failed", "boom")])


def test_a_cancel_that_lands_before_its_command_starts_still_ends_it_with_a_reply(
    harness: Harness,
) -> None:
    now = time.time()
    common = {"uid": UID, "issued_at": iso(now), "expires_at": iso(now + 600)}
    cancel = {"id": "cancel-1", "name": "cancel", "args": {"command_id": "join-1"}, **common}
    join = {"id": "join-1", "name": "join", "args": {}, **common}
    ping = {"id": "join-2", "name": "join", "args": {}, **common}
    s = harness.signer
    payloads = [_encode(s.sign(cancel)), _encode(s.sign(join))]

    async def burst() -> tuple[list[dict[str, Any]], Dispatcher]:
        replies: list[dict[str, Any]] = []
        dispatcher = _dispatcher(harness, replies)
        for p in payloads:  # as the broker link does: both handled before either runs
            await dispatcher.handle(p)
        await asyncio.sleep(0.05)
        await dispatcher.handle(_encode(s.sign(ping)))  # a later exclusive command
        await asyncio.sleep(0.05)
        await dispatcher.close()
        return replies, dispatcher

    replies, _ = harness.loop.run_until_complete(burst())
    finals = {r["command_id"]: r for r in replies if r["state"] in FINAL}
    assert finals.get("join-1", {}).get("state") == "canceled", replies
    assert finals.get("join-2", {}).get("state") == "succeeded", replies


def _dispatcher(harness: Harness, replies: list[dict[str, Any]]) -> Dispatcher:
    harness.batches += 1
    where = harness.directory / str(harness.batches)
    where.mkdir()
    clock = NeverBackwardsClock(where / "clock", persist_every_s=60)
    ops = FuzzOps()
    dispatcher = Dispatcher(
        uid=UID,
        specs=build_specs(ops),
        ledger=CommandLedger(where / "commands.ledger", clock),
        now=clock.now,
        max_bytes=MAX_BYTES,
        max_skew_s=300,
        max_ttl_s=3600,
        verify=harness.verifier.verify,
        allow_unsigned=False,
        send_reply=replies.append,
        send_error=lambda code, msg: None,
        external_busy=lambda: None,
        log=make_logger(level=LevelHolder("error"), fmt="json", stream=io.StringIO()),
    )
    ops.dispatcher = dispatcher
    return dispatcher
