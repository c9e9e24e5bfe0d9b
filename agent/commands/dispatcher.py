"""Remote command dispatch (docs/controller.md): from raw MQTT payload to exactly one final reply.

Envelope checks run in the contract's order (agent/core/envelope.py up to the signature, then
here: duplicate ids, ``unknown_command``, ``bad_args``, ``busy``). Only verified ids enter
the ledger, and a verified id is never executed twice, across restarts: a repeat gets the
recorded final reply (or the current state) with ``duplicate: true``. Each command is a
declared `CommandSpec`; the dispatcher owns scheduling, exclusivity, timeouts, cancellation,
progress and replies, so a command's ``run`` only does its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import _compat
from agent.commands.ledger import CommandLedger, LedgerFull
from agent.core.codes import FINAL_STATES, CommandState
from agent.core.envelope import CommandEnvelope, Rejection, validate_envelope
from agent.core.errors import AgentError
from agent.logs import Log

FINAL = FINAL_STATES


class ArgsError(AgentError, ValueError):
    """The command's ``args`` do not fit its declaration: ``bad_args``."""


class CommandFailed(AgentError):
    """The command ran and failed; ``code`` goes to the reply's ``error.code``."""

    def __init__(self, code: str, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.result = result


class Progress:
    """Handed to a running command so it can report ``in_progress`` with a percentage."""

    def __init__(self, send: Callable[[int | None, str], None]) -> None:
        self._send = send

    def __call__(self, percent: int | None, message: str = "") -> None:
        self._send(percent, message)


Runner = Callable[[dict[str, Any], Progress], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    run: Runner
    check_args: Callable[[dict[str, Any]], dict[str, Any]]
    exclusive: bool = False
    timeout_s: float = 60.0
    on_cancel: Callable[[], None] | None = None


@dataclass
class _Running:
    envelope: CommandEnvelope
    spec: CommandSpec
    task: asyncio.Task[None] | None = None
    state: CommandState = CommandState.ACCEPTED
    progress: int | None = None


class Dispatcher:
    def __init__(
        self,
        *,
        uid: str,
        specs: Mapping[str, CommandSpec],
        ledger: CommandLedger,
        now: Callable[[], float],
        max_bytes: int,
        max_skew_s: float,
        max_ttl_s: float,
        verify: Callable[[bytes, bytes], bool] | None,
        allow_unsigned: bool,
        send_reply: Callable[[dict[str, Any]], None],
        send_error: Callable[[str, str], None],
        external_busy: Callable[[], str | None],
        log: Log,
    ) -> None:
        self.uid = uid
        self.specs = specs
        self.ledger = ledger
        self._now = now
        self.configure(
            max_bytes=max_bytes,
            max_skew_s=max_skew_s,
            max_ttl_s=max_ttl_s,
            verify=verify,
            allow_unsigned=allow_unsigned,
        )
        self._send_reply = send_reply
        self._send_error = send_error
        self._external_busy = external_busy
        self._log = log
        self.running: dict[str, _Running] = {}
        self._closing = False

    def configure(
        self,
        *,
        max_bytes: int,
        max_skew_s: float,
        max_ttl_s: float,
        verify: Callable[[bytes, bytes], bool] | None,
        allow_unsigned: bool,
    ) -> None:
        """Take the ``commands`` settings (at start and on every reload): the next command
        is checked against these, one already accepted runs on."""
        self._limits = (max_bytes, max_skew_s, max_ttl_s)
        self._verify = verify
        self._allow_unsigned = allow_unsigned

    # ---- intake ---------------------------------------------------------------------------
    async def handle(self, payload: bytes) -> None:
        """Never raises: every payload ends in a reply or an error event."""
        try:
            self._handle(payload)
        except Exception as e:  # noqa: BLE001 - a hostile payload must never kill the link
            self._log.error("command.crashed", error=str(e), exc_info=True)
            self._send_error("command_failed", f"internal error handling a command: {e}")

    def _handle(self, payload: bytes) -> None:
        max_bytes, skew, ttl = self._limits
        try:
            env = validate_envelope(
                payload,
                uid=self.uid,
                now=self._now(),
                max_bytes=max_bytes,
                max_skew_s=skew,
                max_ttl_s=ttl,
                verify=self._verify,
                allow_unsigned=self._allow_unsigned,
            )
        except Rejection as r:
            self._log.warning(
                "command.rejected", code=r.code, reason=r.message, command_id=r.command_id
            )
            if r.command_id is None:
                self._send_error(r.code, f"command without a readable id refused: {r.message}")
            elif self.ledger.lookup(r.command_id) is not None:
                # An unverified message reusing a real command's id must not post a false
                # state for it: the controller hears about it as an error event instead.
                self._send_error(
                    r.code, f"refused a message reusing command id {r.command_id}: {r.message}"
                )
            else:
                self._reply(r.command_id, None, CommandState.REJECTED, error=(r.code, r.message))
            return
        seen = self.ledger.lookup(env.id)
        if seen is not None:
            self._duplicate(env, seen.reply, seen.state)
            return
        spec = self.specs.get(env.name)
        rejection: tuple[str, str] | None = None
        args: dict[str, Any] = {}
        if spec is None:
            rejection = ("unknown_command", f"no command named {env.name!r}")
        else:
            try:
                args = spec.check_args(dict(env.args))
            except ArgsError as e:
                rejection = ("bad_args", str(e))
            else:
                if spec.exclusive:
                    busy = self._busy()
                    if busy:
                        rejection = ("busy", f"{busy} is running")
        try:
            self.ledger.record_start(env)
        except LedgerFull as e:
            self._reply(env.id, env.name, CommandState.REJECTED, error=("busy", str(e)))
            return
        except OSError as e:
            # A command that cannot be recorded must not run: a repeat after a restart could
            # not be recognised. Ask the controller to retry later, as for a full ledger.
            self._reply(
                env.id,
                env.name,
                CommandState.REJECTED,
                error=("busy", f"cannot record the command in the state directory: {e.strerror}"),
            )
            return
        if rejection is not None:
            self._log.warning(
                "command.rejected",
                command_id=env.id,
                name=env.name,
                code=rejection[0],
                reason=rejection[1],
            )
            self._reply(env.id, env.name, CommandState.REJECTED, error=rejection, record=True)
            return
        assert spec is not None
        run = _Running(env, spec)
        self.running[env.id] = run
        self._log.info("command.accepted", command_id=env.id, name=env.name)
        self._reply(env.id, env.name, CommandState.ACCEPTED)
        run.task = asyncio.create_task(self._execute(run, args), name=f"command-{env.name}")
        run.task.add_done_callback(functools.partial(self._never_started, run))

    def _busy(self) -> str | None:
        for r in self.running.values():
            if r.spec.exclusive:
                return f"command {r.spec.name} ({r.envelope.id})"
        external = self._external_busy()
        return f"nodeadm {external}" if external else None

    def _duplicate(self, env: CommandEnvelope, reply: dict[str, Any] | None, state: str) -> None:
        self._log.info("command.duplicate", command_id=env.id, name=env.name, state=state)
        if reply is not None:
            again = {**reply, "duplicate": True}
            again.pop("seq", None)
            again.pop("ts", None)
            self._send_reply(again)
            return
        running = self.running.get(env.id)
        self._reply(
            env.id,
            env.name,
            running.state if running else CommandState(state),
            progress=running.progress if running else None,
            duplicate=True,
            message="already running",
        )

    # ---- execution -------------------------------------------------------------------------
    async def _execute(self, run: _Running, args: dict[str, Any]) -> None:
        env, spec = run.envelope, run.spec

        def progress(percent: int | None, message: str) -> None:
            run.state, run.progress = CommandState.IN_PROGRESS, percent
            self.ledger.record_progress(env.id, CommandState.IN_PROGRESS)
            self._reply(
                env.id, env.name, CommandState.IN_PROGRESS, progress=percent, message=message
            )

        state, result, error, message = CommandState.SUCCEEDED, None, None, ""
        try:
            async with _compat.timeout(spec.timeout_s):
                result = await spec.run(args, Progress(progress))
        except TimeoutError:
            state, error = (
                CommandState.TIMED_OUT,
                ("timed_out", f"did not finish within {spec.timeout_s:g} s"),
            )
            if spec.on_cancel:
                spec.on_cancel()
        except asyncio.CancelledError:
            why = "the agent is stopping" if self._closing else "canceled by a cancel command"
            state, error = CommandState.CANCELED, ("canceled", why)
            if spec.on_cancel:
                spec.on_cancel()
        except CommandFailed as e:
            state, error, result = CommandState.FAILED, (e.code, e.message), e.result
        except Exception as e:  # noqa: BLE001 - one command's bug must not kill the agent
            self._log.error("command.crashed", command_id=env.id, error=str(e), exc_info=True)
            state, error = CommandState.FAILED, ("internal_error", str(e))
        finally:
            self.running.pop(env.id, None)
        if state == CommandState.SUCCEEDED:
            message = "done"
        self._reply(
            env.id,
            env.name,
            state,
            result=result,
            error=error,
            progress=100 if state == CommandState.SUCCEEDED else run.progress,
            message=message or (error[1] if error else ""),
            record=True,
        )
        self._log.info("command.finished", command_id=env.id, name=env.name, state=state)

    def _never_started(self, run: _Running, _task: asyncio.Task[None]) -> None:
        """A task canceled before its first step never runs `_execute`: end it here."""
        if self.running.get(run.envelope.id) is not run:
            return  # `_execute` ran and sent the final reply
        self.running.pop(run.envelope.id, None)
        self._reply(
            run.envelope.id,
            run.spec.name,
            CommandState.CANCELED,
            error=("canceled", "canceled before it started"),
            record=True,
        )

    def cancel(self, command_id: str) -> bool:
        run = self.running.get(command_id)
        if run is None or run.task is None or run.task.done():
            return False
        run.task.cancel()
        return True

    async def close(self) -> None:
        self._closing = True
        tasks = [r.task for r in self.running.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def finish_interrupted(self) -> None:
        """Commands that were running when the agent died get their one final reply now."""
        for entry in self.ledger.interrupted():
            self._reply(
                entry.id,
                entry.name,
                CommandState.FAILED,
                error=("agent_restarted", "the agent restarted while the command ran"),
                record=True,
            )

    # ---- replies -----------------------------------------------------------------------------
    def _reply(
        self,
        command_id: str,
        name: str | None,
        state: CommandState,
        *,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
        progress: int | None = None,
        message: str = "",
        duplicate: bool = False,
        record: bool = False,
    ) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "command_id": command_id,
            "uid": self.uid,
            "name": name,
            "state": state,
            "progress": progress,
            "message": message or (error[1] if error else state),
            "result": result if state in FINAL else None,
            "error": {"code": error[0], "message": error[1]} if error else None,
            "duplicate": duplicate,
        }
        if record:
            # Recorded before it is sent: a crash in between must not cause a second final reply.
            try:
                self.ledger.record_final(command_id, reply)
            except OSError as e:
                # The reply still goes out; only a repeat after a restart could not be
                # answered from the ledger (it would find the command still "running").
                self._log.error("ledger.final_not_saved", command_id=command_id, error=str(e))
        self._send_reply(reply)
        return reply
