"""A throwaway RabbitMQ node with the MQTT plugin, for tests of the MQTT output.

The node is separate from the RabbitMQ that serves the suite on 127.0.0.1:5672: its own
node name (``mqtt-<hex>@localhost``), its own free ports for AMQP, MQTT and Erlang
distribution (all bound to 127.0.0.1), its own data, log, config and plugins files in a
temporary directory, and its own Erlang cookie (``HOME`` points into that directory for
the node and for ``rabbitmqctl``). It registers with the epmd already running on 4369,
which is shared and stays. Nothing of the system's ``/etc/rabbitmq`` is read.

A first boot takes about 10 s, 3 to 6 s of it the MQTT plugin waiting (on purpose, in
RabbitMQ 3.10) for cluster peers before it elects itself leader of its client-id store;
so the fixture is session-scoped and the node starts once.

A test module pulls the fixture in by importing it, as the suite does with other shared
fixtures::

    from tests.support.rabbit_mqtt import RabbitMqttNode, rabbit_mqtt  # noqa: F401

    @pytest.mark.broker
    def test_something(rabbit_mqtt: RabbitMqttNode) -> None:  # noqa: F811
        client.username_pw_set(rabbit_mqtt.user, rabbit_mqtt.password)
        client.connect(rabbit_mqtt.host, rabbit_mqtt.mqtt_port)

Modules that import it share one node: the first setup starts it, the last teardown (at
the end of the session) stops it. Listing ``tests.support.rabbit_mqtt`` in the root
conftest's ``pytest_plugins`` would make the import unnecessary.

The fixture never skips: a node that does not come up fails the test, with the tails of
the node's log and console output in the message.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port

# Debian's /usr/sbin scripts switch to the rabbitmq user (and its HOME, hence its cookie)
# and send the output to /var/log/rabbitmq; the scripts they call take our environment.
_SBIN_CANDIDATES = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/lib/rabbitmq/sbin"))

# The node writes this to its log once every plugin has started and listeners are open.
_STARTED = "Server startup complete"

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class NodeError(RuntimeError):
    """The node did not start or stop as asked; the message holds its log's tail."""


def _sbin_dir() -> Path:
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


class RabbitMqttNode:
    """One RabbitMQ node with ``rabbitmq_mqtt`` on free ports of 127.0.0.1.

    ``start()`` returns once the node has booted and takes MQTT connections for ``user``
    (password ``password``, all permissions on vhost ``/``; anonymous MQTT is refused);
    ``stop()`` halts it, waits for its Erlang processes to be gone and removes its files.
    Also a context manager.
    """

    def __init__(
        self, user: str = "mqtt-test", password: str | None = None, mqtt_port: int = 0
    ) -> None:
        self.host = "127.0.0.1"
        self.user = user
        self.password = password if password is not None else secrets.token_urlsafe(12)
        self.node = f"mqtt-{secrets.token_hex(4)}@localhost"
        self.mqtt_port = mqtt_port  # 0: a free port, chosen by start()
        self.amqp_port = 0
        self.dist_port = 0
        self.directory: Path | None = None
        self.start_seconds = 0.0
        self._server: subprocess.Popen[bytes] | None = None
        self._processes: list[tuple[int, int]] = []
        self._env: dict[str, str] = {}
        self._sbin = Path()

    @property
    def port(self) -> int:
        """The MQTT port (for clients that take any broker)."""
        return self.mqtt_port

    @property
    def tls_port(self) -> int:
        raise NotImplementedError("the node has no TLS listener")

    @property
    def ca_file(self) -> Path:
        raise NotImplementedError("the node has no TLS listener")

    def url(self) -> str:
        """``mqtt://user@host:port``: the broker's address without the password."""
        return f"mqtt://{self.user}@{self.host}:{self.mqtt_port}"

    def __enter__(self) -> RabbitMqttNode:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Files

    def _path(self, name: str) -> Path:
        assert self.directory is not None, "the node has not been started"
        return self.directory / name

    @property
    def log_file(self) -> Path:
        return self._path("log") / f"{self.node}.log"

    @property
    def console_file(self) -> Path:
        return self._path("console.txt")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log and of its console output (boot errors)."""
        if self.directory is None:
            return "(not started)"
        return (
            f"--- {self.log_file} ---\n{_tail(self.log_file, lines)}\n"
            f"--- {self.console_file} ---\n{_tail(self.console_file, lines)}"
        )

    def _write_files(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="rabbit-mqtt-"))
        self.directory = directory
        for name in ("home", "mnesia", "log", "conf.d"):
            (directory / name).mkdir()
        cookie = directory / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = {self.host}:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.local = {self.host}:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = false\n"
            "mqtt.vhost = /\n"
            "mqtt.exchange = amq.topic\n"
            # Created at first boot with all permissions on '/'; no guest account then.
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.file.level = info\n"
        )
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

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> <args>`` with the node's cookie; does not check the status."""
        return subprocess.run(
            [str(self._sbin / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Boot the node; raises NodeError (with the log's tail) and cleans up if it fails."""
        if self._server is not None:
            raise NodeError(f"{self.node} is already running")
        began = time.monotonic()
        self._sbin = _sbin_dir()
        self.mqtt_port = self.mqtt_port or free_port()
        self.amqp_port, self.dist_port = free_port(), free_port()
        self._write_files()
        try:
            self._boot(timeout)
        except NodeError as error:
            tail = self.log_tail()
            self.stop()
            raise NodeError(f"RabbitMQ node {self.node} did not start: {error}\n{tail}") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _boot(self, timeout: float) -> None:
        with self.console_file.open("wb") as console:
            # A session of its own: a Ctrl-C at the terminal is not the node's business,
            # and the whole group can be killed if the node will not stop.
            self._server = subprocess.Popen(
                [str(self._sbin / "rabbitmq-server")],
                env=self._env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._server.poll() is not None:
                raise NodeError(
                    f"rabbitmq-server ended (status {self._server.returncode}) during boot"
                )
            try:
                if _STARTED in self.log_file.read_text(errors="replace"):
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise NodeError(f"no '{_STARTED}' in the log within {timeout:.0f} s")
            time.sleep(0.1)
        confirmed = self.ctl("await_startup", "--timeout", "30")
        if confirmed.returncode != 0:
            raise NodeError(f"rabbitmqctl await_startup: {confirmed.stdout}{confirmed.stderr}")
        self._processes = _descendants(self._server.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Halt the node (``rabbitmqctl stop``, then signals if need be), wait until none of
        its Erlang processes is left and remove its files. Does nothing if not started."""
        server, self._server = self._server, None
        try:
            if server is not None:
                self._halt(server, timeout)
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def _halt(self, server: subprocess.Popen[bytes], timeout: float) -> None:
        processes = self._processes + _descendants(server.pid)
        if server.poll() is None:
            try:
                stopped = self.ctl("stop", timeout=timeout).returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            if not stopped and server.poll() is None:
                # Not reachable (still booting, say): the script stops the VM on SIGTERM.
                os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
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


# One node per session, shared by every module that imports the fixture: each import is
# a fixture definition of its own, hence the count.
_shared: RabbitMqttNode | None = None
_users = 0


@pytest.fixture(scope="session")
def rabbit_mqtt() -> Iterator[RabbitMqttNode]:
    """A running RabbitMQ node with the MQTT plugin (see the module's docstring)."""
    global _shared, _users
    if _shared is None:
        node = RabbitMqttNode()
        try:
            node.start()
        except NodeError as error:
            pytest.fail(str(error), pytrace=False)
        _shared = node
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0 and _shared is not None:
            node, _shared = _shared, None
            node.stop()
