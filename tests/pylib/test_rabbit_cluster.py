"""The three-node cluster harness (``tools.rabbit_cluster``) does what cluster tests need.

What RabbitMQ 3.10 does here, as this test found: a quorum queue's leader is the node it
was declared through; when that node's app stops, another member leads within about a
second and the queue keeps its messages; when the app starts again, the node comes back
as a follower and leadership stays where it moved (nothing rebalances it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pytest

from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster  # noqa: F401
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker


@contextmanager
def _connected(
    cluster: RabbitCluster, node: str, connection_name: str
) -> Iterator[pika.BlockingConnection]:
    params = pika.URLParameters(cluster.url(node))
    params.client_properties = {"connection_name": connection_name}
    connection = pika.BlockingConnection(params)
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def test_a_quorum_queue_keeps_its_message_when_its_leader_stops(
    rabbit_cluster: RabbitCluster,  # noqa: F811
) -> None:
    cluster = rabbit_cluster
    a, b, c = cluster.node_names
    queue = f"test-cluster-{uuid.uuid4().hex[:8]}"
    publisher = f"test-publisher-{uuid.uuid4().hex[:8]}"
    try:
        with _connected(cluster, a, "test-declarer") as connection:
            connection.channel().queue_declare(
                queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
        with _connected(cluster, b, publisher) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            # With confirms, this returns once the queue's members hold the message (a
            # nack or an unroutable message raises).
            channel.basic_publish(
                "", queue, b"snapshot", pika.BasicProperties(delivery_mode=2), mandatory=True
            )
            assert cluster.node_of_connection(publisher) == b
        # A quorum queue's count is its leader's last tick's, so it may lag a moment.
        assert wait_until(lambda: cluster.queue_depths()[queue] == 1, 10.0, 0.1)

        leader = cluster.quorum_leader(queue)
        assert leader == a  # the declaring node leads
        cluster.stop_node(leader)  # stop_app: still a member, serving nothing
        new_leader = cluster.await_leader(queue, not_on=leader)
        assert cluster.quorum_status(queue)[leader] == "noproc"

        # Through the member that does not lead: the channel's commands go to the leader.
        via = next(node for node in (b, c) if node != new_leader)
        with _connected(cluster, via, "test-consumer") as connection:
            channel = connection.channel()
            got: list[bytes] = []

            def take() -> bool:
                method, _properties, body = channel.basic_get(queue, auto_ack=True)
                if method is not None:
                    got.append(body)
                return bool(got)

            assert wait_until(take, timeout=10.0, step=0.1)
        assert got == [b"snapshot"]

        cluster.start_node(leader)  # waits until it is back in the cluster
        assert cluster.running_nodes() == sorted(cluster.node_names)
        assert wait_until(lambda: cluster.quorum_status(queue)[leader] == "follower", 30.0, 0.2)
        assert cluster.quorum_leader(queue) == new_leader  # not moved back
        assert wait_until(lambda: cluster.queue_depths()[queue] == 0, 10.0, 0.1)
    finally:
        cluster.heal()
        with _connected(cluster, a, "test-cleanup") as connection:
            connection.channel().queue_delete(queue)
