"""A real Mosquitto broker for tests, and an MQTT client that records what it sees.

:class:`Mosquitto` runs Debian's ``/usr/sbin/mosquitto`` on two free ports of 127.0.0.1
with a configuration of its own in a folder of the test's: no anonymous access, one user
(from a password file made with ``mosquitto_passwd``), no persistence (so a restart
forgets retained messages), a plain listener and a TLS listener whose throwaway CA and
server certificate (for ``127.0.0.1`` and ``localhost``) are made at test time. The
broker can be stopped, killed and started again on the SAME ports, as a daemon under test
keeps reconnecting. Its log is ``<folder>/mosquitto.log`` (``broker.log()`` reads it).

:class:`Subscriber` is a paho-mqtt 2.x client (MQTT 3.1.1, its own network thread) that
subscribes to topic filters, records every message, re-subscribes after the broker comes
back, and waits for messages. :func:`connack` tries one connection and returns the
broker's answer (for "wrong password is refused" tests).

Using the fixture: import it into the test module, as the suite does with its other
shared fixtures, and name it as an argument::

    from tests.support.mosquitto import Subscriber, mosquitto  # noqa: F401

    @pytest.mark.mqtt
    def test_something(mosquitto: Mosquitto) -> None:  # noqa: F811
        with Subscriber(mosquitto, ["homeassistant/#"]) as seen:
            ...

The fixture yields a started broker and stops it after the test (it skips the test when
Mosquitto is not installed). Everything started here is stopped by ``stop()`` /
``close()``; the suite fails a test that leaks a thread or a socket.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.net import free_port
from tests.support.wait import wait_until

__all__ = [
    "MOSQUITTO",
    "MOSQUITTO_PASSWD",
    "PASSWORD",
    "USER",
    "Message",
    "Mosquitto",
    "Subscriber",
    "available",
    "connack",
    "make_pki",
    "mosquitto",
]

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")

USER = "daemon"
# Awkward on purpose: an '@' and a ':' (URL delimiters) and a space.
PASSWORD = "p@ss:w0rd with space"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def available() -> bool:
    """True when Debian's mosquitto and mosquitto_passwd are installed."""
    return all(os.access(path, os.X_OK) for path in (MOSQUITTO, MOSQUITTO_PASSWD))


# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------


def make_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``127.0.0.1`` / ``localhost`` signed by
    it, valid for a day, written as PEM: ``(ca_file, cert_file, key_file)``."""
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snapshot-processor test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_file, cert_file, key_file = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


# --------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Endpoint(Protocol):
    """What a client needs of a broker: Mosquitto here, or a RabbitMQ node's MQTT plugin."""

    host: str
    user: str
    password: str

    @property
    def port(self) -> int: ...

    @property
    def tls_port(self) -> int: ...

    @property
    def ca_file(self) -> Path: ...


class Mosquitto:
    """Debian's Mosquitto on ``host`` (127.0.0.1), ``port`` (plain) and ``tls_port``.

    The ports are chosen once, in the constructor, and kept by every ``start()``, so a
    client can reconnect to the same address after ``stop()``/``kill()`` + ``start()``
    or ``restart()``. ``ca_file`` verifies the TLS listener's certificate.
    """

    def __init__(self, folder: Path, *, user: str = USER, password: str = PASSWORD) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        while self.tls_port == self.port:
            self.tls_port = free_port()
        self.user = user
        self.password = password
        self.ca_file, self.cert_file, self.key_file = make_pki(folder)
        self.password_file = folder / "passwd"
        self.config_file = folder / "mosquitto.conf"
        self.log_file = folder / "mosquitto.log"
        self.output_file = folder / "mosquitto.out"  # stdout/stderr: errors before logging starts
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._make_password_file()
        self.config_file.write_text(self._config())

    # ---- configuration

    def _make_password_file(self) -> None:
        # -b: password from the command line (an argv element, so spaces are fine);
        # -c: create the file. mosquitto_passwd stores a salted hash.
        subprocess.run(
            [str(MOSQUITTO_PASSWD), "-b", "-c", str(self.password_file), self.user, self.password],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.password_file.chmod(0o600)

    def _config(self) -> str:
        # When started as root, mosquitto drops to the 'mosquitto' user unless told to be
        # the user it already is; that user could not read the test's folder.
        me = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            f"user {me}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_type unsubscribe",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
            f"listener {self.port} {self.host}",
            "",
            f"listener {self.tls_port} {self.host}",
            f"cafile {self.ca_file}",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            "",
        ]
        return "\n".join(lines)

    # ---- life cycle

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> Mosquitto:
        """Start the broker and return once both listeners accept TCP connections."""
        if self._process is not None:
            raise RuntimeError("mosquitto is already started")
        self._output = self.output_file.open("ab")
        self._process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        process = self._process

        def ready() -> bool:
            if process.poll() is not None:
                return True  # exited: stop waiting, reported below
            return _accepts(self.host, self.port) and _accepts(self.host, self.tls_port)

        wait_until(ready, timeout=START_TIMEOUT, step=0.05)
        if process.poll() is not None or not ready():
            code = process.poll()
            self.kill()
            raise RuntimeError(
                f"mosquitto did not start on {self.host}:{self.port}/{self.tls_port}"
                f" (exit code {code}):\n{self.log()}"
            )
        return self

    def stop(self) -> None:
        """Graceful stop: SIGTERM, then wait for the process (SIGKILL if it hangs)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt stop: SIGKILL, as a crash or a pulled plug would end it."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same ports (retained messages are gone)."""
        self.stop()
        self.start()

    def _end(self, how: signal.Signals) -> None:
        process, self._process = self._process, None
        try:
            if process is not None:
                if process.poll() is None:
                    process.send_signal(how)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT)
        finally:
            output, self._output = self._output, None
            if output is not None:
                output.close()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- for clients and for debugging

    def url(self, tls: bool = False) -> str:
        """``mqtt://user@127.0.0.1:port`` or ``mqtts://user@127.0.0.1:tls_port``; the
        password is not in it (the daemon reads it from MQTT_PASSWORD)."""
        scheme, port = ("mqtts", self.tls_port) if tls else ("mqtt", self.port)
        return f"{scheme}://{quote(self.user, safe='')}@{self.host}:{port}"

    def log(self) -> str:
        """The broker's log file, and anything it printed before the log file was open."""
        parts = []
        for path in (self.output_file, self.log_file):
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text(errors="replace")
                if text:
                    parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {self.host}:{self.port} tls:{self.tls_port} {state}>"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started broker in ``tmp_path / "mosquitto"``, stopped after the test."""
    if not available():
        pytest.skip("Debian's mosquitto is not installed")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message as a client received it; ``received`` is ``time.monotonic()``."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received: float

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.payload)

    def brief(self) -> str:
        shown = self.payload if len(self.payload) <= 160 else self.payload[:160] + b"..."
        flag = " retained" if self.retain else ""
        return f"{self.topic}{flag}: {shown!r}"


def _client(
    broker: Endpoint,
    *,
    user: str | None,
    password: str | None,
    tls: bool,
    client_id: str | None,
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if user is not None:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set(ca_certs=str(broker.ca_file))
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    return client


def _end_client(client: mqtt.Client) -> None:
    """Disconnect, stop the network thread, and release the client's sockets."""
    client.disconnect()
    client.loop_stop()
    # paho closes its wake-up socket pair only when the client is collected.
    del client


def connack(
    broker: Endpoint,
    *,
    user: str | None,
    password: str | None,
    tls: bool = False,
    timeout: float = 10.0,
) -> ReasonCode:
    """Connect once with these credentials and return the broker's CONNACK reason code
    (``rc.is_failure`` is False when accepted); ``user=None`` connects anonymously."""
    answers: list[ReasonCode] = []
    done = threading.Event()

    def on_connect(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        answers.append(reason_code)
        done.set()

    client = _client(broker, user=user, password=password, tls=tls, client_id=None)
    client.on_connect = on_connect
    client.connect_async(broker.host, broker.tls_port if tls else broker.port, keepalive=30)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise AssertionError(f"no CONNACK from {broker!r} within {timeout} s")
        return answers[0]
    finally:
        _end_client(client)


class Subscriber:
    """A test-side MQTT client that subscribes to ``topics`` and records every message.

    It connects as the broker's user (or ``user``/``password``), over TLS verified with
    ``broker.ca_file`` when ``tls``; the constructor returns once the subscriptions are
    acknowledged and raises ``ConnectionError`` if the broker refuses it. After the
    broker restarts, paho reconnects and the subscriptions are made again
    (``connections`` counts them; see :meth:`wait_connected`).
    """

    def __init__(
        self,
        broker: Endpoint,
        topics: Sequence[str] = ("#",),
        *,
        tls: bool = False,
        user: str | None = None,
        password: str | None = None,
        qos: int = 1,
        client_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.broker = broker
        self.topics = list(topics)
        self.tls = tls
        self.user = broker.user if user is None else user
        self.password = broker.password if password is None else password
        self.qos = qos
        self._changed = threading.Condition()
        self._messages: list[Message] = []
        self._connections = 0  # connects whose subscriptions were acknowledged
        self._pending_mid: int | None = None
        self._refused: ReasonCode | None = None
        self._problems: list[str] = []
        self._closed = False
        self._client = _client(
            broker, user=self.user, password=self.password, tls=tls, client_id=client_id
        )
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect_async(broker.host, broker.tls_port if tls else broker.port, 30)
        self._client.loop_start()
        try:
            self._wait_first_connection(timeout)
        except BaseException:
            self.close()
            raise

    # ---- paho callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._changed:
            if reason_code.is_failure:
                self._refused = reason_code
                self._changed.notify_all()
                return
        result, mid = client.subscribe([(topic, self.qos) for topic in self.topics])
        with self._changed:
            if result != mqtt.MQTT_ERR_SUCCESS:
                self._problems.append(f"subscribe failed: {mqtt.error_string(result)}")
            self._pending_mid = mid
            self._changed.notify_all()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        with self._changed:
            self._problems.append("connection attempt failed")
            self._changed.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._changed:
            if mid != self._pending_mid:
                return
            failed = [str(code) for code in reason_codes if code.is_failure]
            if failed:
                self._problems.append(f"subscription refused: {failed}")
            else:
                self._connections += 1
            self._changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = Message(
            topic=message.topic,
            payload=bytes(message.payload),
            retain=bool(message.retain),
            qos=int(message.qos),
            received=time.monotonic(),
        )
        with self._changed:
            self._messages.append(received)
            self._changed.notify_all()

    # ---- connection state

    def _wait_first_connection(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(
                lambda: self._connections > 0 or self._refused is not None, timeout
            )
            if self._refused is not None:
                raise ConnectionError(f"{self.broker!r} refused {self.user!r}: {self._refused}")
            if self._connections == 0:
                raise ConnectionError(
                    f"not connected and subscribed to {self.broker!r} within {timeout} s"
                    f" (tls={self.tls}); problems: {self._problems}"
                )

    @property
    def connections(self) -> int:
        """How many times this client has connected and had its subscriptions acked."""
        with self._changed:
            return self._connections

    def wait_connected(self, times: int, timeout: float = 15.0) -> None:
        """Wait until :attr:`connections` reaches ``times`` (e.g. one more than before a
        broker restart); AssertionError if it does not."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._connections >= times, timeout):
                raise AssertionError(
                    f"subscriber connected {self._connections} time(s), not {times},"
                    f" within {timeout} s; problems: {self._problems[-5:]}"
                )

    @property
    def is_connected(self) -> bool:
        return self._client.is_connected()

    # ---- what was received

    def messages(self, topic: str = "#") -> list[Message]:
        """Every message received so far on topics matching the filter ``topic``."""
        with self._changed:
            return [m for m in self._messages if mqtt.topic_matches_sub(topic, m.topic)]

    def last(self, topic: str = "#") -> Message | None:
        """The latest message on a topic matching ``topic``, if any."""
        found = self.messages(topic)
        return found[-1] if found else None

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._changed:
            self._messages.clear()

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Message], object] | None = None,
        timeout: float = 10.0,
        *,
        since: float | None = None,
    ) -> Message:
        """The first message (in arrival order) on a topic matching the filter ``topic``
        for which ``predicate`` is truthy, waiting up to ``timeout`` s for one to arrive.
        ``since`` (a ``time.monotonic()`` value) ignores messages received before it.
        Raises AssertionError listing what was seen if none comes."""

        def find() -> Message | None:
            for message in self._messages:
                if since is not None and message.received < since:
                    continue
                if not mqtt.topic_matches_sub(topic, message.topic):
                    continue
                if predicate is None or predicate(message):
                    return message
            return None

        with self._changed:
            found: list[Message] = []

            def ready() -> bool:
                hit = find()
                if hit is not None:
                    found.append(hit)
                return hit is not None

            if self._changed.wait_for(ready, timeout):
                return found[0]
            on_topic = [m for m in self._messages if mqtt.topic_matches_sub(topic, m.topic)]
            others = sorted({m.topic for m in self._messages} - {m.topic for m in on_topic})
        shown = "\n  ".join(m.brief() for m in on_topic[-10:]) or "(none)"
        what = "a matching message" if predicate is not None else "a message"
        raise AssertionError(
            f"no {what} on {topic!r} within {timeout} s"
            f"{' since the mark' if since is not None else ''}."
            f"\nSeen on {topic!r} ({len(on_topic)}, last 10):\n  {shown}"
            f"\nOther topics seen: {others[:30]}"
        )

    def retained(
        self, topic: str = "#", settle: float = 0.3, timeout: float = 10.0
    ) -> dict[str, Message]:
        """What the broker holds retained now on topics matching ``topic``: a fresh client
        (same credentials and transport) subscribes and collects the retained messages
        the broker replays, until none has come for ``settle`` s. ``{topic: message}``."""
        with Subscriber(
            self.broker,
            [topic],
            tls=self.tls,
            user=self.user,
            password=self.password,
            timeout=timeout,
        ) as probe:

            def quiet() -> bool:
                latest = probe.last()
                since = latest.received if latest is not None else 0.0
                return time.monotonic() - since >= settle

            time.sleep(settle)
            wait_until(quiet, timeout=timeout, step=0.05)
            return {m.topic: m for m in probe.messages() if m.retain}

    # ---- sending

    def publish(
        self,
        topic: str,
        payload: bytes | str | None = None,
        retain: bool = False,
        qos: int = 1,
        timeout: float = 10.0,
    ) -> None:
        """Publish and wait until it is sent (qos 0) or acknowledged (qos 1, 2)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(
                f"publish to {topic!r} not completed within {timeout} s"
                f" ({mqtt.error_string(info.rc)})"
            )

    # ---- ending

    def close(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        _end_client(self._client)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscriber {self.topics} on {self.broker!r} tls={self.tls}>"
