"""Connection settings: RABBITMQ_SERVER_ADDRESS keeps working, RABBITMQ_URL overrides it."""

from __future__ import annotations

import pytest

from pylib.amqp.params import (
    broker_parameters,
    connect,
    connected_to,
    connection_parameters,
    describe,
)
from pylib.observe.redact import redact
from tests.support.net import free_port


def test_address_with_and_without_port() -> None:
    plain = connection_parameters(None, "rabbit", connection_name="t")
    assert (plain.host, plain.port, plain.virtual_host) == ("rabbit", 5672, "/")
    assert plain.ssl_options is None
    ported = connection_parameters(None, "10.0.0.2:5673", connection_name="t")
    assert (ported.host, ported.port) == ("10.0.0.2", 5673)


def test_amqps_url_with_credentials_and_vhost() -> None:
    params = connection_parameters(
        "amqps://snap:s3cret%40pw@broker.home:5671/cams", "ignored", connection_name="t"
    )
    assert (params.host, params.port, params.virtual_host) == ("broker.home", 5671, "cams")
    assert params.ssl_options is not None  # TLS
    assert params.credentials.username == "snap"
    assert "s3cret@pw" not in describe(params)
    assert redact("login s3cret@pw refused") == "login *** refused"
    assert params.client_properties == {"connection_name": "t"}


def test_a_cluster_is_its_nodes_in_order_each_named_and_without_secrets() -> None:
    nodes = broker_parameters(
        "amqp://snap:n0de-pw@a.home:5672/, amqps://snap:n0de-pw@b.home:5671/cams,",
        "ignored",
        connection_name="garage listener",
    )
    assert [(p.host, p.port, p.virtual_host) for p in nodes] == [
        ("a.home", 5672, "/"),
        ("b.home", 5671, "cams"),
    ]
    assert all(p.client_properties == {"connection_name": "garage listener"} for p in nodes)
    assert describe(nodes) == "a.home:5672//, b.home:5671/cams"
    assert "n0de-pw" not in redact("node said n0de-pw")
    # No URL: the address, as before.
    (alone,) = broker_parameters(None, "rabbit:5673", connection_name="t")
    assert (alone.host, alone.port) == ("rabbit", 5673)


@pytest.mark.broker
def test_a_connection_moves_past_a_node_that_does_not_answer() -> None:
    dead = free_port()  # nothing listens there: refused at once
    nodes = broker_parameters(
        f"amqp://guest:guest@127.0.0.1:{dead}/,amqp://guest:guest@127.0.0.1:5672/",
        "ignored",
        connection_name="t",
    )
    connection = connect(nodes)
    try:
        assert connected_to(connection, nodes) == "127.0.0.1:5672//"
    finally:
        connection.close()
