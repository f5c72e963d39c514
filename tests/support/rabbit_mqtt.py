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

import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.rabbit_node import START_TIMEOUT, STOP_TIMEOUT, NodeError, RabbitNode, free_port

__all__ = ["NodeError", "RabbitMqttNode", "rabbit_mqtt"]


class RabbitMqttNode:
    """One RabbitMQ node with ``rabbitmq_mqtt`` on free ports of 127.0.0.1.

    ``start()`` returns once the node has booted and takes MQTT connections for ``user``
    (password ``password``, all permissions on vhost ``/``; anonymous MQTT is refused);
    ``stop()`` halts it, waits for its Erlang processes to be gone and removes its files.
    Also a context manager. The node itself is a ``tools.rabbit_node.RabbitNode``.
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
        self._node: RabbitNode | None = None

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

    def _started(self) -> RabbitNode:
        assert self._node is not None, "the node has not been started"
        return self._node

    @property
    def log_file(self) -> Path:
        return self._started().log_file

    @property
    def console_file(self) -> Path:
        return self._started().console_file

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log and of its console output (boot errors)."""
        return "(not started)" if self._node is None else self._node.log_tail(lines)

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> <args>`` with the node's cookie; does not check the status."""
        return self._started().ctl(*args, timeout=timeout)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Boot the node; raises NodeError (with the log's tail) and cleans up if it fails."""
        if self._node is not None:
            raise NodeError(f"{self.node} is already running")
        began = time.monotonic()
        self.mqtt_port = self.mqtt_port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="rabbit-mqtt-"))
        self._node = RabbitNode(
            self.node,
            self.directory,
            cookie=secrets.token_hex(16).upper(),
            user=self.user,
            password=self.password,
            host=self.host,
            plugins=["rabbitmq_mqtt"],
            listeners={"mqtt": self.mqtt_port},
            config=["mqtt.allow_anonymous = false", "mqtt.vhost = /", "mqtt.exchange = amq.topic"],
        )
        try:
            self._node.start(timeout)
        except BaseException:
            self.stop()  # the node stopped itself; its files go
            raise
        self.amqp_port, self.dist_port = self._node.amqp_port, self._node.dist_port
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Halt the node, wait until none of its Erlang processes is left and remove its
        files. Does nothing if not started."""
        node, self._node = self._node, None
        try:
            if node is not None:
                node.stop(timeout)
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None


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
