"""SIGHUP: read the config again and push each changed live section to the part that owns it.

The sections are compared by `agent.core.reload.config_change`. Live ones go to their owners:
the command verifier gets the new key and ``allow_unsigned``; the nodeadm runner, the
checks, health and the assignment source get the new config; the lifecycle its new policy;
the logger its level. The rest, as long as they differ from the config the agent started
with, are named in ``needs_restart``: in the log's
``config.reloaded``, in a ``config`` event, and in a ``config_needs_restart`` error. A config
that does not parse, or names a key file that is not a usable key, is refused whole and the
old one kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from agent.commands.dispatcher import Dispatcher
from agent.commands.signature import BadPublicKey, KeyFile
from agent.configfile import load_config
from agent.core import lifecycle as lc
from agent.core.codes import ErrorCode
from agent.core.config import Config, ConfigError, ConfigMissing
from agent.core.reload import ConfigChange, config_change
from agent.driver import LifecycleDriver
from agent.logs import LevelHolder, Log
from agent.outbound import Outbound

KeyChanged = Callable[[str | None, str | None], None]


def command_key(config: Config, on_change: KeyChanged) -> KeyFile | None:
    path = config.commands.public_key_file
    return None if path is None else KeyFile(path, on_change=on_change)


def lifecycle_policy(config: Config) -> lc.Policy:
    return lc.Policy(
        auto_join=config.join.auto,
        appliance=config.host.mode == "appliance",
        retry_backoff_s=config.join.retry_backoff_s,
        degraded_after_s=config.health.degraded_after_s,
    )


class Reloader:
    def __init__(
        self,
        config: Config,
        *,
        env: Mapping[str, str],
        key: KeyFile | None,
        key_changed: KeyChanged,
        dispatcher: Dispatcher,
        driver: LifecycleDriver,
        level: LevelHolder,
        parts: Sequence[Callable[[Config], None]],
        offer_assignment_file: Callable[[], None],
        out: Outbound,
        log: Log,
    ) -> None:
        self.config = config
        self._env = env
        self._key = key
        self._key_changed = key_changed
        self._dispatcher = dispatcher
        self._driver = driver
        self._level = level
        self._parts = parts
        self._offer_assignment_file = offer_assignment_file
        self._out = out
        self._log = log
        # What needs a restart is what differs from this; its command limits stay in force
        # (agent/core/reload.py: the ledger and the clock were sized for the skew, the MQTT
        # session carries the size and expiry).
        self._started = config

    def reload(self) -> None:
        path = self.config.source
        if path is None:
            return
        try:
            new = load_config(path, self._env)
            key = self._key
            if new.commands.public_key_file != (key.path if key else None):
                key = command_key(new, self._key_changed)
        except (ConfigError, ConfigMissing, BadPublicKey) as e:
            self._log.error("config.reload_refused", error=str(e))
            self._out.error(ErrorCode.CONFIG_INVALID, f"reload refused: {e}")
            return
        # Live: what this reload changed. Waiting for a restart: every restart-only setting
        # that differs from the start, also if an earlier reload changed it (and none that a
        # later reload set back).
        change = ConfigChange(
            live=config_change(self.config, new).live,
            needs_restart=config_change(self._started, new).needs_restart,
        )
        self.config, self._key = new, key
        self._apply(new, change)
        live, restart = list(change.live), list(change.needs_restart)
        self._log.info("config.reloaded", live=live, needs_restart=restart)
        self._out.emit("config", {"state": "reloaded", "live": live, "needs_restart": restart})
        if restart:
            self._out.error(
                ErrorCode.CONFIG_NEEDS_RESTART, f"changed {', '.join(restart)}: restart the agent"
            )
        if new.assignment_file is not None:
            self._offer_assignment_file()

    def _apply(self, new: Config, change: ConfigChange) -> None:
        self._level.set(new.log.level)
        self._driver.policy = lifecycle_policy(new)
        for configure in self._parts:
            configure(new)
        cmd, limits = new.commands, self._started.commands
        self._dispatcher.configure(
            max_bytes=limits.max_bytes,
            max_skew_s=limits.max_skew_s,
            max_ttl_s=limits.max_ttl_s,
            verify=self._key.verify if self._key else None,
            allow_unsigned=cmd.allow_unsigned,
        )
        if change.changed("commands") and cmd.allow_unsigned:
            self._log.warning(
                "commands.unsigned_allowed",
                message="commands.allow_unsigned is true: for development only",
            )


__all__ = ["Reloader", "command_key", "lifecycle_policy"]
