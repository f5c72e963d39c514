"""OnePasswordSource reads secrets through the real SDK from a loopback Connect server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pylib.config.onepassword import OnePasswordSource, SecretSourceError
from pylib.observe.redact import redact
from tests.support.fakes.onepassword import FakeConnect

TOKEN = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZha2UifQ.connect-token-xyz"
VAULTS: dict[str, dict[str, str | list[dict[str, str]]]] = {
    "Home Automation": {
        "RABBITMQ_PASSWORD": "rabbit-Pw-1",
        "FTP_PASS": "ftp pass:with@odd chars",
        "AWS_SECRET": [
            {"id": "key", "type": "STRING", "label": "access key id", "value": "AKIAFAKE"},
            {"id": "secret", "type": "CONCEALED", "label": "secret", "value": "aws-concealed-9"},
        ],
        "API_TOKEN": [
            {"id": "user", "type": "STRING", "label": "username", "value": "bot"},
            {"id": "cred", "type": "STRING", "label": "Credential", "value": "labelled-cred-7"},
        ],
        "NOTE_ONLY": [{"id": "notes", "type": "STRING", "purpose": "NOTES", "label": "notes"}],
    },
    "Other": {"RABBITMQ_PASSWORD": "wrong-vault-pw"},
}


@pytest.fixture
def connect() -> Iterator[FakeConnect]:
    with FakeConnect(TOKEN, VAULTS) as server:
        yield server


def test_reads_password_by_vault_title_and_caches_vault_id(connect: FakeConnect) -> None:
    with OnePasswordSource(connect.base_url, TOKEN, "Home Automation") as source:
        assert source.get("RABBITMQ_PASSWORD") == "rabbit-Pw-1"
        assert source.get("FTP_PASS") == "ftp pass:with@odd chars"
    vault_lookups = [r for r in connect.requests if r.startswith("GET /v1/vaults?")]
    assert vault_lookups == ['GET /v1/vaults?filter=name eq "Home Automation"']


def test_reads_password_by_vault_id(connect: FakeConnect) -> None:
    vault_id = connect.vault_id("Other")
    with OnePasswordSource(connect.base_url, TOKEN, vault_id) as source:
        assert source.get("RABBITMQ_PASSWORD") == "wrong-vault-pw"
    assert f"GET /v1/vaults/{vault_id}" in connect.requests
    assert not any(r.startswith("GET /v1/vaults?") for r in connect.requests)


def test_falls_back_to_concealed_then_labelled_field(connect: FakeConnect) -> None:
    with OnePasswordSource(connect.base_url, TOKEN, "Home Automation") as source:
        assert source.get("AWS_SECRET") == "aws-concealed-9"
        assert source.get("API_TOKEN") == "labelled-cred-7"
        with pytest.raises(SecretSourceError, match="NOTE_ONLY"):
            source.get("NOTE_ONLY")


def test_id_shaped_vault_name_falls_back_to_name_lookup() -> None:
    name = "abcdefghijklmnopqrstuvwxyz"  # 26 lower-case letters: the SDK's id shape
    with (
        FakeConnect(TOKEN, {name: {"PW": "id-shaped-pw"}}) as server,
        OnePasswordSource(server.base_url, TOKEN, name) as source,
    ):
        assert source.get("PW") == "id-shaped-pw"


def test_vault_removed_after_caching_is_an_error_and_forgotten() -> None:
    vaults: dict[str, dict[str, str | list[dict[str, str]]]] = {"Home": {"PW": "first-pw"}}
    with (
        FakeConnect(TOKEN, vaults) as server,
        OnePasswordSource(server.base_url, TOKEN, "Home") as source,
    ):
        assert source.get("PW") == "first-pw"
        removed = vaults.pop("Home")
        with pytest.raises(SecretSourceError, match="no vault 'Home'"):
            source.get("PW")
        vaults["Home"] = removed
        assert source.get("PW") == "first-pw"
        lookups = [r for r in server.requests if r.startswith("GET /v1/vaults?")]
        assert len(lookups) == 2


def test_missing_item_is_none(connect: FakeConnect) -> None:
    with OnePasswordSource(connect.base_url, TOKEN, "Home Automation") as source:
        assert source.get("NO_SUCH_ITEM") is None


def test_unknown_vault_is_an_error(connect: FakeConnect) -> None:
    with (
        OnePasswordSource(connect.base_url, TOKEN, "Nope") as source,
        pytest.raises(SecretSourceError, match="no vault 'Nope'"),
    ):
        source.get("RABBITMQ_PASSWORD")
    unknown_id = "a" * 26
    with (
        OnePasswordSource(connect.base_url, TOKEN, unknown_id) as source,
        pytest.raises(SecretSourceError, match=unknown_id),
    ):
        source.get("RABBITMQ_PASSWORD")


def test_token_and_secrets_are_registered_for_redaction(connect: FakeConnect) -> None:
    with OnePasswordSource(connect.base_url, TOKEN, "Home Automation") as source:
        secret = source.get("AWS_SECRET")
    assert secret is not None
    line = redact(f"token {TOKEN} gave {secret}")
    assert TOKEN not in line
    assert secret not in line


def test_wrong_token_raises_without_the_token(connect: FakeConnect) -> None:
    wrong = "eyJwrong-token-value-1234567890"
    with (
        OnePasswordSource(connect.base_url, wrong, "Home Automation") as source,
        pytest.raises(SecretSourceError) as caught,
    ):
        source.get("RABBITMQ_PASSWORD")
    message = str(caught.value)
    assert connect.base_url in message
    assert "refused" in message
    assert "Invalid token signature" in message
    assert wrong not in message
    assert TOKEN not in message


def test_unreachable_host_raises() -> None:
    # A port that was free a moment ago: connecting is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    with (
        OnePasswordSource(host, TOKEN, "Home Automation", timeout=2.0) as source,
        pytest.raises(SecretSourceError, match="cannot reach") as caught,
    ):
        source.get("RABBITMQ_PASSWORD")
    assert host in str(caught.value)
    assert TOKEN not in str(caught.value)
