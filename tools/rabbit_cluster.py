"""A throwaway three-node RabbitMQ cluster on 127.0.0.1, for tests and ``make cluster-demo``.

Three ``RabbitNode``s (``c<hex>-a@localhost``, ``-b``, ``-c``) share one Erlang cookie;
each has its own AMQP and distribution ports and its own data and log folders in one
temporary directory. They boot in parallel, then b and c join a (``stop_app``,
``join_cluster``, ``start_app``). One user with a random password (not guest) is created
on a at its first boot; b and c take a's users when they join. The password is in the
URLs this hands out and in the nodes' config files (mode 600), never in a log line.

    with RabbitCluster() as cluster:
        url = cluster.url_list()            # amqp://...@127.0.0.1:A/,...:B/,...:C/
        leader = cluster.quorum_leader("jobs")
        cluster.stop_node(leader)           # stop_app: still a member, not serving
        cluster.await_leader("jobs", not_on=leader)
        cluster.start_node(leader)

Queries go through ``rabbitmqctl``/``rabbitmq-queues`` against a running node; each call
is an Erlang VM of its own and costs about a second. Nothing here imports pytest.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from tools.rabbit_node import START_TIMEOUT, STOP_TIMEOUT, NodeError, RabbitNode

__all__ = ["ClusterError", "RabbitCluster"]

log = logging.getLogger(__name__)

LETTERS = ("a", "b", "c")

# A quorum queue's message count (list_queues) is refreshed once a tick, 5 s by default:
# too stale for a test that publishes and then looks.
_ADVANCED = "[{rabbit, [{quorum_tick_interval, 500}]}].\n"


class ClusterError(NodeError):
    """The cluster did not do what was asked; the message ends with every node's log tail."""


class RabbitCluster:
    """Three RabbitMQ nodes on 127.0.0.1 clustered together (see the module's docstring).

    Node arguments take the full name (``c1a2b3c4-b@localhost``) or its letter (``"b"``).
    A node is stopped in one of two ways and ``start_node`` undoes either: ``stop_app``
    (the VM stays up, the node stays a cluster member, its listeners close) or
    ``kill_node`` (the whole VM ends, gracefully or as a crash; ``boot_node`` starts it on
    the same files and ports and it rejoins).
    """

    def __init__(self, user: str = "cluster-test", password: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.user = user
        self.password = password if password is not None else secrets.token_urlsafe(16)
        self.prefix = f"c{secrets.token_hex(4)}"
        self.directory: Path | None = None
        self.start_seconds = 0.0  # cold start of the whole cluster, joins included
        self._nodes: dict[str, RabbitNode] = {}
        self._app_stopped: set[str] = set()

    def __repr__(self) -> str:
        # Never the password.
        return f"RabbitCluster({self.node_names!r}, user={self.user!r})"

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Names and addresses

    @property
    def node_names(self) -> list[str]:
        """The full node names, a first."""
        return [f"{self.prefix}-{letter}@localhost" for letter in LETTERS]

    def node(self, name: str) -> RabbitNode:
        """The node called ``name`` (full name or letter)."""
        full = name if "@" in name else f"{self.prefix}-{name}@localhost"
        try:
            return self._nodes[full]
        except KeyError:
            raise ClusterError(f"no node {name!r} in {self.node_names} (started?)") from None

    def url(self, name: str) -> str:
        """``amqp://user:password@127.0.0.1:<port>/`` of one node (holds the password)."""
        node = self.node(name)
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{node.amqp_port}/"
        )

    @property
    def urls(self) -> list[str]:
        """One amqp:// URL per node, a first (they hold the password)."""
        return [self.url(name) for name in self.node_names]

    def url_list(self, order: Sequence[str] | None = None) -> str:
        """The URLs of ``order`` (names or letters; all, a first, by default), comma-joined
        as ``RABBITMQ_URL`` takes a cluster's nodes."""
        return ",".join(self.url(name) for name in (order or self.node_names))

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of every node's log and console output."""
        return "\n".join(node.log_tail(lines) for node in self._nodes.values())

    def _fail(self, what: str) -> ClusterError:
        return ClusterError(f"{what}\n{self.log_tails()}")

    # Start and stop of the whole cluster

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Boot the three nodes in parallel and join b and c to a; on failure stop
        everything and raise ClusterError (with the nodes' log tails)."""
        if self._nodes:
            raise ClusterError(f"{self!r} is already started")
        began = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="rabbit-cluster-"))
        cookie = secrets.token_hex(16).upper()
        for name in self.node_names:
            letter = name.split("@")[0].rsplit("-", 1)[1]
            self._nodes[name] = RabbitNode(
                name,
                self.directory / letter,
                cookie=cookie,
                user=self.user,
                password=self.password,
                host=self.host,
                advanced=_ADVANCED,
            )
        try:
            self._form(timeout)
        except NodeError as error:
            # The node's own message ends with its tail; the cluster's adds every node's.
            failed = self._fail(f"cluster did not start: {str(error).splitlines()[0]}")
            self.stop()
            raise failed from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        log.info("cluster %s up in %.1f s", self.prefix, self.start_seconds)

    def _form(self, timeout: float) -> None:
        first, *others = self._nodes.values()
        # All three boot at once (most of the start-up is each VM's own boot); b is joined
        # while c may still be booting.
        for node in self._nodes.values():
            node.launch()
        first.await_started(timeout)
        for node in others:
            node.await_started(timeout)
            node.stop_app()
            node.ctl_ok("join_cluster", first.node)
            node.start_app(timeout)  # fails unless the node came up as a member

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut every node down at once, wait until no process of theirs is left, and
        remove the directory. Does nothing if not started; safe to call twice."""
        nodes, self._nodes = list(self._nodes.values()), {}
        self._app_stopped.clear()
        errors: list[str] = []
        try:
            for node in nodes:
                node.terminate()  # all at once: a graceful stop takes a second or two each
            for node in nodes:
                try:
                    node.wait_stopped(timeout)
                except NodeError as error:
                    errors.append(str(error))
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None
        if errors:
            raise ClusterError("; ".join(errors))

    def heal(self, timeout: float = START_TIMEOUT) -> None:
        """Start every node that was stopped, and wait until all three run as one cluster."""
        for name in self.node_names:
            if not self.is_running(name):
                self.start_node(name, timeout)

    # One node

    def is_running(self, name: str) -> bool:
        """Whether the node's VM runs and its app was not stopped through this cluster."""
        node = self.node(name)
        return node.running and node.node not in self._app_stopped

    def stop_app(self, name: str) -> None:
        """``rabbitmqctl stop_app``: the node stays a cluster member but serves nothing."""
        node = self.node(name)
        try:
            node.stop_app()
        except NodeError as error:
            raise self._fail(f"stop_app on {node.node}: {str(error).splitlines()[0]}") from None
        self._app_stopped.add(node.node)

    def start_app(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """``rabbitmqctl start_app`` after ``stop_app``; waits until it is back in the cluster."""
        node = self.node(name)
        try:
            node.start_app(timeout)
        except NodeError as error:
            raise self._fail(f"start_app on {node.node}: {str(error).splitlines()[0]}") from None
        self._app_stopped.discard(node.node)
        self.await_running(node.node, timeout)

    def kill_node(self, name: str, *, graceful: bool = False) -> None:
        """End the node's VM: at once (SIGKILL, as a crash or power loss would) or, with
        ``graceful``, by a clean shutdown. It stays listed as a cluster member."""
        node = self.node(name)
        try:
            if graceful:
                node.stop()
            else:
                node.kill()
        except NodeError as error:
            raise self._fail(f"stopping {node.node}: {str(error).splitlines()[0]}") from None
        self._app_stopped.discard(node.node)

    def boot_node(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Boot a killed node again (same files and ports); waits until it is back in the cluster."""
        node = self.node(name)
        try:
            node.start(timeout)
        except NodeError as error:
            raise self._fail(f"booting {node.node} again: {str(error).splitlines()[0]}") from None
        self.await_running(node.node, timeout)

    def stop_node(self, name: str, *, whole: bool = False) -> None:
        """Take a node out of service: ``stop_app`` by default, or (``whole``) a clean
        shutdown of its VM. ``start_node`` undoes either."""
        if whole:
            self.kill_node(name, graceful=True)
        else:
            self.stop_app(name)

    def start_node(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Bring a stopped node back (``start_app`` or a boot, as it was stopped) and wait
        until it is back in the cluster; nothing to do if it runs."""
        node = self.node(name)
        if not node.running:
            self.boot_node(name, timeout)
        elif node.node in self._app_stopped:
            self.start_app(name, timeout)

    def await_running(self, name: str, timeout: float = 60.0) -> None:
        """Wait until the node's app runs and it sees every running node as running
        (itself included): back in the cluster. ClusterError if not within ``timeout``."""
        node = self.node(name)
        try:
            node.ctl_ok("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
        except NodeError as error:
            raise self._fail(f"{node.node} did not start: {str(error).splitlines()[0]}") from None
        expected = {each for each in self.node_names if self.is_running(each)}
        self._await_members(node, expected, timeout)

    def _await_members(self, node: RabbitNode, expected: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            running = set(self._status(node).get("running_nodes", []))
            if expected <= running:
                return
            if time.monotonic() > deadline:
                raise self._fail(
                    f"{node.node} sees {sorted(running)} running, not {sorted(expected)}"
                )
            time.sleep(0.2)

    # What the cluster says

    def ctl(self, *args: str, via: str | None = None) -> str:
        """``rabbitmqctl <args>`` against ``via`` (or the first running node); its output.
        ClusterError (with the log tails) if it fails."""
        node = self.node(via) if via is not None else self._a_running_node()
        try:
            return node.ctl_ok(*args)
        except NodeError as error:
            raise self._fail(str(error).splitlines()[0]) from None

    def _json(self, tool: str, *args: str, via: str | None = None) -> Any:
        node = self.node(via) if via is not None else self._a_running_node()
        done = node.cli(tool, *args, "--formatter", "json")
        if done.returncode != 0:
            raise self._fail(
                f"{tool} -n {node.node} {' '.join(args)} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()}"
            )
        return json.loads(done.stdout) if done.stdout.strip() else None

    def _status(self, node: RabbitNode) -> dict[str, Any]:
        status = self._json("rabbitmqctl", "cluster_status", via=node.node)
        return status if isinstance(status, dict) else {}

    def _a_running_node(self) -> RabbitNode:
        for name in self.node_names:
            if self.is_running(name):
                return self.node(name)
        raise self._fail("no node of the cluster runs")

    def running_nodes(self, via: str | None = None) -> list[str]:
        """The nodes ``via`` (or the first running node) sees running, sorted."""
        node = self.node(via) if via is not None else self._a_running_node()
        return sorted(self._status(node).get("running_nodes", []))

    def quorum_status(self, queue: str, vhost: str = "/") -> dict[str, str]:
        """Each member of a quorum queue and its Raft state (``leader``, ``follower``,
        ``noproc`` on a node whose app is stopped, ``nodedown``, ...), asked of a running node."""
        rows = self._json("rabbitmq-queues", "quorum_status", "--vhost", vhost, queue)
        found: dict[str, str] = {}
        for row in rows or []:
            state = row["Raft State"]
            # A member on a node that is down comes as ["nodedown", node].
            found[row["Node Name"]] = str(state[0] if isinstance(state, list) else state)
        return found

    def quorum_leader(self, queue: str, vhost: str = "/") -> str | None:
        """The node leading the quorum queue, None during an election."""
        leaders = [
            node for node, state in self.quorum_status(queue, vhost).items() if state == "leader"
        ]
        return leaders[0] if len(leaders) == 1 else None

    def await_leader(
        self, queue: str, vhost: str = "/", *, not_on: str | None = None, timeout: float = 30.0
    ) -> str:
        """The quorum queue's leader once there is one (on a node other than ``not_on``)."""
        avoid = self.node(not_on).node if not_on is not None else None
        deadline = time.monotonic() + timeout
        while True:
            leader = self.quorum_leader(queue, vhost)
            if leader is not None and leader != avoid:
                return leader
            if time.monotonic() > deadline:
                raise self._fail(f"no leader for quorum queue {queue!r} within {timeout:.0f} s")
            time.sleep(0.2)

    def queue_depths(self, vhost: str = "/") -> dict[str, int]:
        """Queue name -> messages (ready and unacknowledged) in ``vhost``. A quorum
        queue's count is the one of its leader's last tick (every 0.5 s here)."""
        rows = self._json("rabbitmqctl", "list_queues", "--vhost", vhost, "name", "messages")
        return {row["name"]: int(row["messages"] or 0) for row in rows or []}

    def node_of_connection(self, connection_name: str) -> str | None:
        """The node that holds the AMQP connection whose client named itself
        ``connection_name`` (client property ``connection_name``); None if none does.
        ``list_connections`` answers for the whole cluster; the server port tells the node."""
        by_port = {node.amqp_port: node.node for node in self._nodes.values()}
        rows = self._json("rabbitmqctl", "list_connections", "port", "client_properties")
        for row in rows or []:
            # client_properties comes as [key, type, value] triples.
            properties = {item[0]: item[-1] for item in row.get("client_properties") or []}
            if properties.get("connection_name") == connection_name:
                return by_port.get(row.get("port"))
        return None
