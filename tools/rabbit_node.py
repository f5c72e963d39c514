"""One throwaway RabbitMQ node on 127.0.0.1, for tests and demos (never the system's node).

A ``RabbitNode`` has its own node name, its own free ports for AMQP, Erlang distribution
and any plugin listeners (MQTT, say), and its own data, log, config and plugins files in
a directory its owner gives it; its Erlang cookie is read from ``<directory>/home`` (HOME
points there for the node and for ``rabbitmqctl``), so nodes given the same cookie can
cluster. It registers with the epmd already running on 4369, which is shared and stays.
Nothing of the system's ``/etc/rabbitmq`` is read.

The node can be booted, stopped and booted again on the same files and ports (a cluster
member keeps its identity across restarts). Its owner removes the directory.

A first boot takes about 10 s on two cores; ``rabbitmqctl`` itself is an Erlang VM and
costs about a second a call.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "NodeError", "RabbitNode", "free_port"]

# Debian's /usr/sbin scripts switch to the rabbitmq user (and its HOME, hence its cookie)
# and send the output to /var/log/rabbitmq; the scripts they call take our environment.
_SBIN_CANDIDATES = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/lib/rabbitmq/sbin"))

# The node writes this to its log once every plugin has started and listeners are open.
_STARTED = "Server startup complete"

# rabbitmqctl listens for distribution on 35672-35682 (RABBITMQ_CTL_DIST_PORT_MIN/MAX):
# a node port there would take one of the few ports every CLI call on the machine shares.
_CTL_DIST_PORTS = range(35672, 35683)

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class NodeError(RuntimeError):
    """A node did not start or stop as asked; the message holds its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now, outside rabbitmqctl's range."""
    while True:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in _CTL_DIST_PORTS:
            return port


def sbin_dir() -> Path:
    """Where ``rabbitmq-server`` and ``rabbitmqctl`` are (Debian's unprivileged copies)."""
    for directory in _SBIN_CANDIDATES:
        if (directory / "rabbitmq-server").exists():
            return directory
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise NodeError("rabbitmq-server is not installed (looked in /usr/lib/rabbitmq/bin, PATH)")
    return Path(found).resolve().parent


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and start time of a process; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; the fields follow it.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every living process below ``root``, however they grouped.

    Erlang's helper programs (erl_child_setup, inet_gethost) start sessions of their own,
    so the node's process group does not cover them.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is not None:
            children.setdefault(stat[1], []).append((int(entry), stat[2]))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name}: none)"
    return "\n".join(text.splitlines()[-lines:])


class RabbitNode:
    """A RabbitMQ node named ``node`` (``name@localhost``) with its files in ``directory``.

    ``user`` (password ``password``) is created with all permissions on ``/`` at the first
    boot; there is no guest account. ``plugins`` are enabled; ``listeners`` maps a plugin's
    config prefix to its port (``{"mqtt": 0}`` writes ``mqtt.listeners.tcp.local``), 0
    meaning a free port chosen at the first boot, as for ``amqp_port`` and ``dist_port``;
    ``config`` lines are added to ``rabbitmq.conf``, ``advanced`` (Erlang terms) is the
    ``advanced.config`` for settings it cannot hold. Ports, once chosen, are kept for
    later boots. ``cookie`` is the Erlang cookie (the same for every node of a cluster).
    """

    def __init__(
        self,
        node: str,
        directory: Path,
        *,
        cookie: str,
        user: str,
        password: str,
        host: str = "127.0.0.1",
        amqp_port: int = 0,
        dist_port: int = 0,
        plugins: Sequence[str] = (),
        listeners: Mapping[str, int] | None = None,
        config: Sequence[str] = (),
        advanced: str = "",
    ) -> None:
        self.node = node
        self.directory = directory
        self.host = host
        self.user = user
        self.password = password
        self.amqp_port = amqp_port
        self.dist_port = dist_port
        self.listener_ports: dict[str, int] = dict(listeners or {})
        self.start_seconds = 0.0  # how long the last boot took
        self._cookie = cookie
        self._plugins = tuple(plugins)
        self._config = tuple(config)
        self._advanced = advanced
        self._server: subprocess.Popen[bytes] | None = None
        self._processes: list[tuple[int, int]] = []
        self._env: dict[str, str] = {}
        self._sbin = Path()
        self._log_offset = 0
        self._launched = 0.0

    def __repr__(self) -> str:
        # Never the password.
        return f"RabbitNode({self.node!r}, amqp={self.host}:{self.amqp_port})"

    # Files

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.node}.log"

    @property
    def console_file(self) -> Path:
        return self.directory / "console.txt"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log and of its console output (boot errors)."""
        return (
            f"--- {self.log_file} ---\n{_tail(self.log_file, lines)}\n"
            f"--- {self.console_file} ---\n{_tail(self.console_file, lines)}"
        )

    def _prepare(self) -> None:
        """Choose the ports and write the files, once: later boots reuse them."""
        if self._env:
            return
        self._sbin = sbin_dir()
        self.amqp_port = self.amqp_port or free_port(self.host)
        self.dist_port = self.dist_port or free_port(self.host)
        for prefix, port in self.listener_ports.items():
            self.listener_ports[prefix] = port or free_port(self.host)
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("home", "mnesia", "log", "conf.d"):
            (directory / name).mkdir(exist_ok=True)
        cookie = directory / "home" / ".erlang.cookie"
        cookie.write_text(self._cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (directory / "enabled_plugins").write_text(f"[{','.join(self._plugins)}].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        listeners = "".join(
            f"{prefix}.listeners.tcp.local = {self.host}:{port}\n"
            for prefix, port in self.listener_ports.items()
        )
        extra = "".join(f"{line}\n" for line in self._config)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = {self.host}:{self.amqp_port}\n"
            f"{listeners}"
            # Created at first boot with all permissions on '/'; no guest account then.
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.file.level = info\n"
            f"{extra}"
        )
        (directory / "rabbitmq.conf").chmod(0o600)  # it holds the password
        if self._advanced:
            (directory / "advanced.config").write_text(self._advanced)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(directory / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(directory / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(directory / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(directory / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(directory / "node.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        self._env = env

    # Commands

    def cli(self, tool: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``<tool> -n <node> <args>`` (rabbitmqctl, rabbitmq-queues, ...) with the node's
        cookie; does not check the status."""
        self._prepare()
        return subprocess.run(
            [str(self._sbin / tool), "-n", self.node, *args],
            env=self._env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> <args>``; does not check the status."""
        return self.cli("rabbitmqctl", *args, timeout=timeout)

    def ctl_ok(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> <args>``'s output; NodeError (with the log's tail) if it fails."""
        try:
            done = self.ctl(*args, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NodeError(
                f"rabbitmqctl -n {self.node} {' '.join(args)}: no answer in {timeout:.0f} s\n"
                f"{self.log_tail()}"
            ) from None
        if done.returncode != 0:
            raise NodeError(
                f"rabbitmqctl -n {self.node} {' '.join(args)} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()}\n{self.log_tail()}"
            )
        return done.stdout

    @property
    def running(self) -> bool:
        """Whether the node's Erlang VM runs (its rabbit application may be stopped)."""
        return self._server is not None and self._server.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Boot the node and wait until it takes connections; on failure the node is
        stopped and NodeError (with the log's tail) raised."""
        self.launch()
        self.await_started(timeout)

    def launch(self) -> None:
        """Start the node's process and return at once (``await_started`` waits for it)."""
        if self.running:
            raise NodeError(f"{self.node} is already running")
        self.wait_stopped()  # a node that ended by itself: collect what is left of it
        self._prepare()
        # A later boot appends to the same log: only what comes after counts.
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._launched = time.monotonic()
        with self.console_file.open("ab") as console:
            # A session of its own: a Ctrl-C at the terminal is not the node's business,
            # and the whole group can be signalled when it stops.
            self._server = subprocess.Popen(
                [str(self._sbin / "rabbitmq-server")],
                env=self._env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def await_started(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the launched node has booted; on failure stop it and raise NodeError."""
        try:
            self._await_boot(timeout)
        except NodeError as error:
            tail = self.log_tail()
            self._stop_quietly()
            raise NodeError(f"RabbitMQ node {self.node} did not start: {error}\n{tail}") from None
        except BaseException:
            self._stop_quietly()
            raise
        self.start_seconds = time.monotonic() - self._launched

    def _await_boot(self, timeout: float) -> None:
        server = self._server
        if server is None:
            raise NodeError("not launched")
        deadline = self._launched + timeout
        while True:
            if server.poll() is not None:
                raise NodeError(f"rabbitmq-server ended (status {server.returncode}) during boot")
            try:
                with self.log_file.open("rb") as log:
                    log.seek(self._log_offset)
                    if _STARTED.encode() in log.read():
                        break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise NodeError(f"no '{_STARTED}' in the log within {timeout:.0f} s")
            time.sleep(0.1)
        confirmed = self.ctl("await_startup", "--timeout", "30")
        if confirmed.returncode != 0:
            raise NodeError(f"rabbitmqctl await_startup: {confirmed.stdout}{confirmed.stderr}")
        self._processes = _descendants(server.pid)

    def stop_app(self) -> None:
        """Stop the rabbit application; the VM stays up and the node stays a cluster member."""
        self.ctl_ok("stop_app")

    def start_app(self, timeout: float = START_TIMEOUT) -> None:
        """Start the rabbit application again; returns once it has booted (the command
        waits for the boot)."""
        self.ctl_ok("start_app", timeout=timeout)

    def terminate(self) -> None:
        """Ask the node to shut down (SIGTERM: a graceful stop, as ``rabbitmqctl stop``
        does, without the second a CLI call costs); ``wait_stopped`` waits for it."""
        if self.running:
            assert self._server is not None
            self._processes += _descendants(self._server.pid)
            # The script traps TERM and passes it to the VM, which stops cleanly.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, signal.SIGTERM)

    def kill(self) -> None:
        """End the node at once (SIGKILL to every process of it), as a crash would."""
        if self._server is not None:
            self._processes += _descendants(self._server.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, signal.SIGKILL)
            for pid, started in self._processes:
                if _alive(pid, started):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.wait_stopped(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the node down and wait until none of its processes is left; its files stay.
        Does nothing if it does not run."""
        self.terminate()
        self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for the node to end (SIGKILL after ``timeout``), and for its helpers."""
        server, self._server = self._server, None
        if server is None:
            return
        processes, self._processes = self._processes + _descendants(server.pid), []
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        # Erlang's helpers end when the VM does; kill any that did not, by their own pid.
        deadline = time.monotonic() + 5.0
        while [p for p in processes if _alive(*p)] and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in processes if _alive(*p)]
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            raise NodeError(f"{self.node} left processes {[pid for pid, _ in left]} behind")

    def _stop_quietly(self) -> None:
        # After a failed boot: the boot's error is the one to report.
        with contextlib.suppress(NodeError):
            self.stop()
