"""Connection settings: RABBITMQ_SERVER_ADDRESS keeps working, RABBITMQ_URL overrides it."""

from __future__ import annotations

from pylib.amqp.params import connection_parameters, describe
from pylib.observe.redact import redact


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
