"""A throwaway three-node RabbitMQ cluster (``tools.rabbit_cluster``) as a session fixture.

A test module pulls the fixture in by importing it, as with ``rabbit_mqtt``::

    from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster  # noqa: F401

    @pytest.mark.broker
    def test_something(rabbit_cluster: RabbitCluster) -> None:  # noqa: F811
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_cluster.url("b")))

The cluster starts once (about 20 s on two cores) and is shared by every module that
imports the fixture; the last teardown, at the end of the session, stops it. A test that
stops a node brings it back (``rabbit_cluster.heal()`` in a ``finally``), so the next
test finds three running nodes. The fixture never skips: a cluster that does not come up
fails the test, with the tails of the nodes' logs in the message.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.rabbit_cluster import ClusterError, RabbitCluster
from tools.rabbit_node import NodeError

__all__ = ["RabbitCluster", "rabbit_cluster"]

# One cluster per session, shared by every module that imports the fixture: each import
# is a fixture definition of its own, hence the count.
_shared: RabbitCluster | None = None
_users = 0


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """A running three-node RabbitMQ cluster on 127.0.0.1 (see the module's docstring)."""
    global _shared, _users
    if _shared is None:
        cluster = RabbitCluster()
        try:
            cluster.start()
        except (ClusterError, NodeError) as error:
            pytest.fail(str(error), pytrace=False)
        _shared = cluster
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0 and _shared is not None:
            cluster, _shared = _shared, None
            cluster.stop()
