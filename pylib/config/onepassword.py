"""Read secrets from a 1Password Connect server, judging HTTP status codes here: the SDK's
getters hide them in one exception quoting the server, and crash on a non-JSON error body."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from onepasswordconnectsdk import new_client
from onepasswordconnectsdk.config import ClientConfig
from onepasswordconnectsdk.utils import PathBuilder, is_valid_uuid

from pylib.observe.redact import redact, register_secret

logger = logging.getLogger(__name__)

# Labels that mark the secret of an item that has no PASSWORD field.
_SECRET_LABELS = ("password", "credential", "value")


class SecretSourceError(RuntimeError):
    """The secret store could not be asked; the message names the host, never the token."""


class OnePasswordSource:
    """Secrets from one vault (an id or a name) of a Connect server, registered for redaction."""

    def __init__(self, host: str, token: str, vault: str, *, timeout: float = 10.0) -> None:
        register_secret(token)
        self._host = host.rstrip("/")
        self._vault = vault
        self._vault_id: str | None = None
        self._lock = threading.Lock()
        # ClientConfig's options override the SDK's defaults, so the timeout is ours.
        self._client: Any = new_client(self._host, token, config=ClientConfig(timeout=timeout))

    def close(self) -> None:
        self._client.session.close()

    def __enter__(self) -> OnePasswordSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, name: str) -> str | None:
        """The secret (PASSWORD field, else CONCEALED, else labelled password, credential or
        value) of the item titled ``name``, or ``None`` if there is no such item. Raises
        :class:`SecretSourceError`: unreachable, token refused, no such vault, no secret field."""
        vault_id = self._resolve_vault_id()
        summaries = self._get_json(
            _filtered(PathBuilder().vaults(vault_id).items(), "title", name),
            "list[SummaryItem]",
            what=f"items of vault {self._vault!r}",
        )
        if summaries is None:
            # The cached vault is gone: look it up afresh next time, and say so now.
            with self._lock:
                self._vault_id = None
            raise self._no_vault_error()
        # The server filters already; matching again guards against a looser filter.
        matches = [summary for summary in summaries if summary.title == name]
        if not matches:
            return None
        if len(matches) > 1:
            logger.warning(
                "1Password vault %s holds %s items titled %s; using the first",
                self._vault,
                len(matches),
                name,
            )
        item = self._get_json(
            PathBuilder().vaults(vault_id).items(matches[0].id).build(),
            "Item",
            what=f"item {name!r}",
        )
        if item is None:  # deleted between the two requests
            return None
        value = _secret_field_value(item)
        if value is None:
            raise SecretSourceError(
                f"1Password Connect at {redact(self._host)}: item {name!r} in vault "
                f"{self._vault!r} has no password, concealed or credential field"
            )
        register_secret(value)
        return value

    def _resolve_vault_id(self) -> str:
        with self._lock:
            if self._vault_id is None:
                self._vault_id = self._lookup_vault_id()
            return self._vault_id

    def _lookup_vault_id(self) -> str:
        if is_valid_uuid(self._vault):
            vault = self._get_json(
                PathBuilder().vaults(self._vault).build(), "Vault", what=f"vault {self._vault!r}"
            )
            if vault is not None:
                return str(vault.id)
        # Not id-shaped, or an id-shaped name (the SDK falls back the same way for items).
        vaults = self._get_json(
            _filtered(PathBuilder().vaults(), "name", self._vault), "list[Vault]", what="vaults"
        )
        for vault in vaults or []:
            if vault.name == self._vault:
                return str(vault.id)
        raise self._no_vault_error()

    def _no_vault_error(self) -> SecretSourceError:
        return SecretSourceError(
            f"1Password Connect at {redact(self._host)}: no vault {self._vault!r} is "
            "visible to this token"
        )

    def _get_json(self, path: str, model: str, *, what: str) -> Any:
        """GET ``path`` and deserialize it as ``model``; a 404 gives ``None``."""
        try:
            response = self._client.build_request("GET", path)
        except httpx.HTTPError as exc:
            raise SecretSourceError(
                f"1Password Connect at {redact(self._host)}: cannot reach the server "
                f"({type(exc).__name__}: {redact(str(exc))})"
            ) from exc
        status = response.status_code
        if status == 404:
            return None
        if status in (401, 403):
            raise SecretSourceError(
                f"1Password Connect at {redact(self._host)}: the token was refused "
                f"(HTTP {status}: {_server_message(response)}) while reading {what}"
            )
        if not 200 <= status < 300:
            raise SecretSourceError(
                f"1Password Connect at {redact(self._host)}: HTTP {status} "
                f"({_server_message(response)}) while reading {what}"
            )
        try:
            return self._client.deserialize(response.content, model)
        except (ValueError, TypeError, AttributeError) as exc:
            raise SecretSourceError(
                f"1Password Connect at {redact(self._host)}: unexpected answer while "
                f"reading {what} ({type(exc).__name__})"
            ) from exc


def _filtered(path: PathBuilder, attribute: str, value: str) -> str:
    """``path`` filtered by ``attribute eq "value"``; unfiltered if the value holds a quote
    (Connect documents no escape): the caller's exact match picks the entry."""
    if '"' in value:
        return str(path.build())
    return str(path.query("filter", f'{attribute} eq "{value}"').build())


def _server_message(response: httpx.Response) -> str:
    """The ``message`` of a Connect error body, or a short excerpt of a non-JSON one."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text[:200].strip()) or "no message"
    if isinstance(body, dict) and body.get("message"):
        return redact(str(body["message"]))
    return "no message"


def _secret_field_value(item: Any) -> str | None:
    fields = [field for field in (item.fields or []) if field.value is not None]
    for field in fields:
        if field.purpose == "PASSWORD":
            return str(field.value)
    for field in fields:
        if field.type == "CONCEALED":
            return str(field.value)
    for field in fields:
        if (field.label or "").lower() in _SECRET_LABELS:
            return str(field.value)
    return None
