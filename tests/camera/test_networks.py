"""CAMERA_NETWORKS: where a trigger's ``device_params`` may send the camera GET.

The policy is checked on addresses alone (literals take no lookup: no packet is sent);
what is refused on the wire is tested with a loopback camera and a CAMERA_NETWORKS that
leaves loopback out, never by aiming at an outside address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from pylib.chain.settle import DONE_KIND, Settlement, ack_token
from pylib.config.settings import ConfigError
from snapshot_processor import config
from snapshot_processor.camera.clients import make_client
from snapshot_processor.camera.networks import (
    AddressRefusedError,
    CameraNetworks,
    parse_networks,
)
from snapshot_processor.camera.registry import CameraAddressRefusedError, CameraRegistry
from snapshot_processor.camera.spec import CameraSpec
from snapshot_processor.camera.stage import SnapshotStage
from snapshot_processor.config import Device
from snapshot_processor.contract.messages import (
    BUNDLE_CAMERA_KIND,
    SNAPSHOT_KIND,
    BundleCameraMessage,
    TriggerMessage,
)
from tests.support.broker import BROKER, Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import foscam_env, make_settings
from tests.support.metrics import sample
from tests.support.wait import wait_until
from tests.support.wire import Wire
from tests.support.wire import wire as wire_for
from tools.camera_simulator import CameraSimulator

PASSWORD = "n0t:for@logs w0rd"
KEY = "Front Door camera"
LOOPBACK_LEFT_OUT = "10.0.0.0/8"


def networks(text: str) -> CameraNetworks:
    return CameraNetworks(parse_networks(text))


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def trigger_addressed(camera: CameraSimulator, host: str = "127.0.0.1") -> str:
    return f"admin:{PASSWORD}@{host}:{camera.port}"


# --- the policy, on addresses alone ---------------------------------------------------
def test_the_default_is_the_private_and_loopback_ranges() -> None:
    default = CameraNetworks.default()
    assert {str(network) for network in default.networks} == {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "::1/128",
        "fc00::/7",
    }
    assert config.load(env={}).camera.networks == default.networks
    for address in (
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.20",
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "fd12:3456::1",
        "::ffff:192.168.1.20",  # IPv4-mapped: judged as the IPv4 it reaches
    ):
        assert default.allows(address), address


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # the cloud metadata address
        "169.254.1.1",
        "fe80::1",
        "fe80::1%1",
        "::ffff:169.254.169.254",
        "8.8.8.8",
        "172.32.0.1",
        "100.100.100.200",  # CGNAT, left out of the default
        "0.0.0.0",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
    ],
)
def test_the_default_refuses_link_local_and_public_addresses(address: str) -> None:
    assert not CameraNetworks.default().allows(address)


@pytest.mark.parametrize(
    "literal", ["169.254.169.254", "0xa9.0xfe.0xa9.0xfe", "fe80::1", "8.8.8.8", "2001:db8::1"]
)
def test_a_literal_outside_is_refused_by_the_lookup_itself(literal: str) -> None:
    # A literal, in any of the forms getaddrinfo reads, resolves without a lookup.
    with pytest.raises(AddressRefusedError) as caught:
        CameraNetworks.default().resolve(literal, 80)
    assert "outside CAMERA_NETWORKS" in str(caught.value)
    assert caught.value.refused


def test_a_link_local_network_listed_itself_is_allowed_a_wider_one_is_not() -> None:
    metadata = networks("169.254.169.254/32")
    assert metadata.allows("169.254.169.254")
    assert not metadata.allows("169.254.169.253")
    assert networks("fe80::/10").allows("fe80::1%1")
    everything = networks("0.0.0.0/0, ::/0")
    assert everything.allows("8.8.8.8")
    assert not everything.allows("169.254.169.254")
    assert not everything.allows("fe80::1")
    assert not everything.allows("::ffff:169.254.169.254")


def test_every_address_a_name_resolves_to_must_be_inside() -> None:
    home = networks("192.168.0.0/16")
    assert home.check("cam.lan", ["192.168.1.5", "192.168.1.6", "192.168.1.5"]) == (
        "192.168.1.5",
        "192.168.1.6",
    )
    with pytest.raises(AddressRefusedError) as caught:
        home.check("cam.lan", ["192.168.1.5", "169.254.169.254"])
    assert caught.value.refused == ("169.254.169.254",)
    assert str(caught.value).startswith("camera address cam.lan (169.254.169.254) is outside")
    with pytest.raises(AddressRefusedError) as escaped:
        home.check("cam\x1b[2J.lan", ["8.8.8.8"])
    assert "\x1b" not in str(escaped.value)


def test_the_setting_is_read_and_checked() -> None:
    settings = config.load(env={"CAMERA_NETWORKS": " 10.0.0.0/8 , 169.254.0.0/16,fe80::/10"})
    assert [str(network) for network in settings.camera.networks] == [
        "10.0.0.0/8",
        "169.254.0.0/16",
        "fe80::/10",
    ]
    for bad in ("10.0.0.1/8", "cam.lan", "10.0.0.0/33"):
        with pytest.raises(ConfigError) as caught:
            config.load(env={"CAMERA_NETWORKS": bad})
        assert "CAMERA_NETWORKS" in str(caught.value)


# --- the client and the registry, over loopback -----------------------------------------
def test_a_host_name_is_reached_at_the_address_checked() -> None:
    # The camera answers on 127.0.0.2 only; "localhost" (from /etc/hosts) means 127.0.0.1.
    with CameraSimulator(host="127.0.0.2", user="admin", password=PASSWORD) as camera:
        spec = CameraSpec(
            key=KEY,
            vendor="foscam",
            host="localhost",
            port=camera.port,
            user="admin",
            password=PASSWORD,
            retries=0,
            connect_to=("127.0.0.2",),
        )
        with make_client(spec) as client:
            assert client.snapshot().startswith(b"\xff\xd8")
        assert camera.served == 1


def trigger_addressed_registry(allowed: str | None) -> CameraRegistry:
    device = Device.model_validate({"LOCATION": "Front Door", "TYPE": "camera"})
    return CameraRegistry(
        [device], retries=0, networks=None if allowed is None else networks(allowed)
    )


def test_a_refused_address_gets_no_client_and_no_packet(camera: CameraSimulator) -> None:
    registry = trigger_addressed_registry(LOOPBACK_LEFT_OUT)
    try:
        with pytest.raises(CameraAddressRefusedError) as caught:
            registry.snapshot(KEY, trigger_addressed(camera))
        # Nothing is known to reach: the HTTP API's snapshot has no address to reuse.
        assert registry.known_spec(KEY) is None
        assert registry.breaker(KEY).failures == 0  # not the camera's failure
    finally:
        registry.close()
    assert camera.connections == 0
    assert camera.requests == 0
    assert PASSWORD not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_a_snapshot_without_a_trigger_reuses_only_a_vetted_address(
    camera: CameraSimulator,
) -> None:
    registry = trigger_addressed_registry("127.0.0.1/32")
    try:
        registry.snapshot(KEY, trigger_addressed(camera))
        with pytest.raises(CameraAddressRefusedError):
            registry.snapshot(KEY, trigger_addressed(camera, host="127.0.0.2"))
        known = registry.known_spec(KEY)
        assert known is not None
        assert (known.host, known.connect_to) == ("127.0.0.1", ("127.0.0.1",))
        # What the HTTP "snapshot now" asks: no device_params, the last vetted address.
        registry.snapshot(KEY, None)
    finally:
        registry.close()
    assert camera.served == 2


@pytest.fixture
def wire() -> Iterator[Wire]:
    with wire_for("snapshot-networks") as ends:
        yield ends


def test_a_refused_trigger_settles_every_part_in_one_line(
    camera: CameraSimulator, wire: Wire, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused = sample("snapshot_failures_total", camera=KEY, reason="address_refused")
    stage = SnapshotStage(
        "snapshot-networks",
        threading.Event(),
        cameras=trigger_addressed_registry(LOOPBACK_LEFT_OUT),
        root=tmp_path,
        inbox=wire.inbox,
        outbox=wire.outbox,
        per_trigger=3,
        interval=0,
    )
    stage.start()
    try:
        assert stage.ready.wait(5)
        with wire.sender() as sender:
            sender.send(
                TriggerMessage(
                    camera_key=KEY,
                    device_label="Front Door",
                    timestamp=0,
                    device_params=trigger_addressed(camera),
                    settlement=Settlement(ack_token("inproc://acks", tag=1)),
                ).envelope()
            )
            parts = wire.receive(5)
    finally:
        assert stage.stop_and_join(10)
    # The burst starts and ends in its bundle, with why it took nothing.
    join, *parts, end = parts
    assert (join.kind, end.kind) == (BUNDLE_CAMERA_KIND, BUNDLE_CAMERA_KIND)
    assert "outside CAMERA_NETWORKS" in str(BundleCameraMessage.read(end).failure)
    # Done marks, not requeues: the trigger is acked, never handed back to come again.
    assert [(part.kind, part.body.get("requeue")) for part in parts] == [(DONE_KIND, None)] * 3
    assert SNAPSHOT_KIND not in {part.kind for part in parts}
    assert sample("snapshot_failures_total", camera=KEY, reason="address_refused") == refused + 1
    lines = [r.getMessage() for r in caplog.records if "outside CAMERA_NETWORKS" in r.getMessage()]
    assert len(lines) == 1
    assert camera.connections == 0


# --- the whole daemon, over the real broker ----------------------------------------------
def queue_depth(name: str) -> int:
    connection = pika.BlockingConnection(BROKER)
    try:
        return int(connection.channel().queue_declare(name, passive=True).method.message_count)
    finally:
        connection.close()


@pytest.mark.broker
def test_a_trigger_outside_camera_networks_is_settled_and_the_camera_never_asked(
    tmp_path: Path, camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env(), CAMERA_NETWORKS=LOOPBACK_LEFT_OUT)
    refused = sample("snapshot_failures_total", camera=KEY, reason="address_refused")
    received = sample("amqp_messages_received_total", queue=settings.queue_name)
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            peer.send_trigger(trigger_body(KEY, device_params=trigger_addressed(camera)))
            assert wait_until(
                lambda: (
                    sample("snapshot_failures_total", camera=KEY, reason="address_refused")
                    == refused + 1
                )
            )
            listener = next(w for w in app.workers if w.name == "listener")
            assert wait_until(lambda: listener.in_flight == 0)  # type: ignore[attr-defined]
            # A requeued trigger would come back within this (the first pause is 2 s).
            peer.pump(3.0)
            assert sample("amqp_messages_received_total", queue=settings.queue_name) == (
                received + 1
            )
            assert queue_depth(settings.queue_name) == 0
            assert (
                app.cameras.registry.known_spec(KEY) is None
            )  # nothing for "snapshot now" to reuse
    finally:
        peer.close()
    assert camera.connections == 0
    assert camera.requests == 0
    assert peer.images() == []
    [line] = [r for r in caplog.records if "outside CAMERA_NETWORKS" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert KEY in line.getMessage()
    assert "127.0.0.1" in line.getMessage()
    assert "w0rd" not in caplog.text
    assert PASSWORD not in caplog.text


@pytest.mark.broker
def test_with_the_default_networks_the_loopback_camera_is_asked(
    tmp_path: Path, camera: CameraSimulator
) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    peer = Peer(exchange)
    try:
        with running_app(settings):
            peer.send_trigger(trigger_body(KEY, device_params=trigger_addressed(camera)))
            images = peer.wait_for_images(1)
    finally:
        peer.close()
    assert len(images) == 1
    assert camera.served >= 1
