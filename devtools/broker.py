"""A real Mosquitto on loopback, and a TCP proxy that can make the path to it go dark.

`Mosquitto` runs the system broker (found on PATH as `mosquitto`, else /usr/sbin) on a free
127.0.0.1 port with its config, log and persistence in a directory of the caller's, and can
be stopped, killed and restarted on the same port, which is how tests exercise reconnects,
persistent sessions and the agent's outbox. It never uses 1883: the distribution's own
service may hold it. `TcpProxy` sits between a client and the broker in its own thread, so
synchronous and asyncio tests alike can cut every connection or blackhole them (a dead path
that only MQTT keepalive notices).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from devtools.controller import ServerTLS

__all__ = ["Mosquitto", "TcpProxy", "free_port"]

_FORBIDDEN_PORTS = frozenset({1883, 8883})


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port in 20000..(ephemeral range - 1) that was free when we bind-tested it.

    Below the ephemeral range, so no outgoing connection of the kernel's choosing can take
    it between our test and the broker's bind (which `bind(0)` ports are prone to).
    """
    high = max(_ephemeral_low() - 1, 20001)
    for _ in range(200):
        port = random.randint(20000, high)
        if port in _FORBIDDEN_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..ephemeral range")


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} not found on PATH or in /usr/sbin")
    return found


def _accepting(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """A mosquitto process. `directory` holds mosquitto.conf, mosquitto.log and the db."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        persistence: bool = False,
        max_queued_messages: int | None = None,
        tls: ServerTLS | None = None,
        extra_config: tuple[str, ...] = (),
        program: str = "mosquitto",
        tcp_nodelay: bool = True,
    ) -> None:
        if port in _FORBIDDEN_PORTS:
            raise ValueError(f"port {port} is reserved for the system's own broker")
        self._owns_directory = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="mosquitto-") if directory is None else directory
        )
        self.port = port or 0
        self._fixed_port = port is not None
        self.tls = tls
        self.tls_port = 0
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra_config = extra_config
        self.program = program
        self.tcp_nodelay = tcp_nodelay
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.output_path = self.directory / "mosquitto.out"
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        if not self.tls:
            raise RuntimeError("no TLS listener configured")
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _write_config(self) -> None:
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        if self.tcp_nodelay:
            # Without it each small publish after an unacknowledged one waits for a 40 ms
            # delayed ACK (benchmarks/roundtrip.py); production brokers want it too.
            lines.append("set_tcp_nodelay true")
        if self.tls:
            ca, cert, key = self.tls.write_server_files(self.directory)
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {ca}"]
            lines += [f"certfile {cert}", f"keyfile {key}"]
            if self.tls.require_client_cert:
                lines += ["require_certificate true", "use_identity_as_username true"]
        if self.persistence:
            # persistence_location must end with a slash: mosquitto appends the file name.
            lines += ["persistence true", f"persistence_location {self.directory}/"]
        else:
            lines.append("persistence false")
        if self.max_queued_messages is not None:
            lines.append(f"max_queued_messages {self.max_queued_messages}")
        if os.geteuid() == 0:
            # As root mosquitto drops to the `mosquitto` user, who can't read a 0700 tmp dir.
            lines.append("user root")
        # The default log types (connections, errors) suffice; add `log_type all` through
        # extra_config when a test needs every packet, since a fleet run would drown in it.
        lines += [f"log_dest file {self.log_path}", *self.extra_config]
        self.config_path.write_text("\n".join(lines) + "\n")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the broker's log and of its stdout/stderr."""
        parts = []
        for path in (self.log_path, self.output_path):
            with contextlib.suppress(OSError):
                parts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(parts)

    def start(self, timeout: float = 5.0) -> Mosquitto:
        """Launch and wait until the port accepts connections; raise with the log tail if not."""
        if self.running:
            return self
        for _ in range(1 if self._fixed_port else 5):
            if not self._fixed_port:
                self.port = free_port()
            if self.tls and (not self._fixed_port or not self.tls_port):
                self.tls_port = free_port()
            if self._launch(timeout):
                return self
            if "Address already in use" not in self.log_tail():
                break
        raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_tail()}")

    def _launch(self, timeout: float) -> bool:
        self._write_config()
        self._output = self.output_path.open("ab")
        self._process = subprocess.Popen(
            [_program(self.program), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            ports = [self.port, self.tls_port] if self.tls else [self.port]
            if all(_accepting(port) for port in ports):
                return True
            time.sleep(0.01)
        self._reap(signal.SIGKILL)
        return False

    def _reap(self, sig: signal.Signals, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (mosquitto saves its persistence db on the way out)."""
        self._reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with nothing saved since the last autosave."""
        self._reap(signal.SIGKILL)

    def restart(self, *, kill: bool = False, timeout: float = 5.0) -> Mosquitto:
        """Stop (or kill) and start again on the same port(s)."""
        if kill:
            self.kill()
        else:
            self.stop()
        fixed, self._fixed_port = self._fixed_port, True
        try:
            return self.start(timeout)
        finally:
            self._fixed_port = fixed

    def close(self) -> None:
        """Stop, and remove the directory if we made it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Link:
    """One proxied connection: the client side, the upstream side, and what happened."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.dropped = False
        self.closed = False
        self.ended = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self.ended.set()
        for writer in self.writers:
            writer.close()


class TcpProxy:
    """A loopback TCP forwarder to `target_port`, running an event loop in its own thread.

    `blackhole()` keeps every connection open but discards all bytes both ways, including
    the FIN of a side that gives up: the path is dead and only a keepalive can tell. New
    connections made meanwhile are accepted and swallowed too. `restore()` forwards again;
    connections that lost bytes while dark are closed at that point, because their byte
    streams now have holes, which is what TCP would end up doing after its retries.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._blackholed = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def connections(self) -> int:
        return len(self._links)

    def start(self) -> TcpProxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._listen())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="devtools-tcpproxy", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("proxy did not start")
        return self

    async def _listen(self) -> None:
        for _ in range(20):
            port = free_port()
            try:
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
            except OSError:
                continue
            self.port = port
            return
        raise RuntimeError("proxy found no free port")

    def _call(self, func: Callable[[], Any]) -> Any:
        """Run `func` on the proxy's loop and wait, so the change is in force on return."""
        if self._loop is None:
            raise RuntimeError("proxy is not running")

        async def wrapper() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(5)

    def blackhole(self) -> None:
        """Silently drop all bytes both ways, keeping connections open."""
        self._call(lambda: setattr(self, "_blackholed", True))

    def restore(self) -> None:
        """Forward again; close connections that lost bytes while blackholed."""

        def apply() -> None:
            self._blackholed = False
            for link in [link for link in self._links if link.dropped]:
                link.close()

        self._call(apply)

    def cut(self) -> None:
        """Close every current connection, both sides (new ones are still accepted)."""

        def apply() -> None:
            for link in list(self._links):
                link.close()

        self._call(apply)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.close()
            # Python 3.11's wait_closed() does not wait for handlers; wait for ours so the
            # loop closes with no pending task and no unclosed transport.
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=2)
            if self._server is not None:
                await self._server.wait_closed()

        # A wedged or already-dead loop must not keep a test's teardown from finishing.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            # Target down: refuse the way a stopped broker would, by closing at once.
            writer.close()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, link), self._pump(up_reader, writer, link)
            )
        finally:
            self._links.discard(link)
            link.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while not link.closed:
                data = await reader.read(65536)
                if self._blackholed:
                    link.dropped = True
                    if not data:
                        # A dead path carries no FIN either. The link is marked dropped, so
                        # restore(), cut() or stop() will close it; wait for that.
                        await link.ended.wait()
                        return
                    continue
                if not data:
                    link.close()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            link.close()
