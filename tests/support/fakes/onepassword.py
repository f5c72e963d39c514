"""A loopback 1Password Connect server: vaults and items, read-only, bearer-token auth.

Serves the JSON shapes of the Connect API (and of the SDK's models):
``GET /v1/vaults[?filter=name eq "X"]``, ``GET /v1/vaults/{id}``,
``GET /v1/vaults/{id}/items[?filter=title eq "X"]`` and
``GET /v1/vaults/{id}/items/{id}``. Ids are 26 lower-case letters and digits, as in
Connect; the SDK tells an id from a title by that shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from typing import Any

from tests.support.fakes import LoopbackServer, Reply, Request

_TIMESTAMP = "2024-05-01T12:00:00Z"
_FILTER = re.compile(r'^\s*(?P<attribute>\w+)\s+eq\s+"(?P<value>[^"]*)"\s*$')

# An item's secret: a password (a Login item with username and password fields), or
# the item's full list of fields in Connect's JSON (any other kind of item).
ItemSpec = str | list[dict[str, Any]]


def make_id(*seed: str) -> str:
    """A stable 26-character lower-case alphanumeric id, as Connect uses."""
    digest = hashlib.sha256("\x00".join(seed).encode()).digest()
    return base64.b32encode(digest).decode().lower()[:26]


class FakeConnect(LoopbackServer):
    """Connect with ``vaults``: vault title -> {item title -> password or field list}.

    Every request must carry ``Authorization: Bearer <token>``; otherwise the answer is
    Connect's 401. ``requests`` lists the ``(method, path?query)`` of every request.
    """

    def __init__(self, token: str, vaults: dict[str, dict[str, ItemSpec]]) -> None:
        super().__init__("1password-connect")
        self.token = token
        self._vaults = vaults
        self._lock = threading.Lock()
        self._requests: list[str] = []

    def vault_id(self, title: str) -> str:
        """The id of the vault titled ``title``."""
        return make_id("vault", title)

    def item_id(self, vault_title: str, item_title: str) -> str:
        """The id of an item."""
        return make_id("item", vault_title, item_title)

    @property
    def requests(self) -> list[str]:
        """``"GET /v1/vaults?filter=..."`` strings for every request so far."""
        with self._lock:
            return list(self._requests)

    def handle(self, request: Request) -> Reply:
        query = "&".join(
            f"{key}={value}" for key, values in request.query.items() for value in values
        )
        with self._lock:
            self._requests.append(
                f"{request.method} {request.path}" + (f"?{query}" if query else "")
            )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Invalid token signature")
        if request.method != "GET":
            return _error(405, "method not allowed in this fake")
        parts = [part for part in request.path.split("/") if part]
        if parts[:2] != ["v1", "vaults"]:
            return _error(404, "not found")
        filter_text = request.param("filter")
        match parts[2:]:
            case []:
                return self._list_vaults(filter_text)
            case [vault_id]:
                vault = self._vault_by_id(vault_id)
                return _json(self._vault_json(vault)) if vault else _error(404, "vault not found")
            case [vault_id, "items"]:
                vault = self._vault_by_id(vault_id)
                if vault is None:
                    return _error(404, "vault not found")
                return self._list_items(vault, filter_text)
            case [vault_id, "items", item_id]:
                vault = self._vault_by_id(vault_id)
                if vault is None:
                    return _error(404, "vault not found")
                for title, spec in self._vaults[vault].items():
                    if self.item_id(vault, title) == item_id:
                        return _json(self._item_json(vault, title, spec))
                return _error(404, "item not found")
        return _error(404, "not found")

    def _vault_by_id(self, vault_id: str) -> str | None:
        return next((title for title in self._vaults if self.vault_id(title) == vault_id), None)

    def _list_vaults(self, filter_text: str | None) -> Reply:
        titles = list(self._vaults)
        if filter_text is not None:
            match = _FILTER.match(filter_text)
            # Connect filters vaults by name; "title" is accepted too, as in items.
            if match is None or match["attribute"] not in ("name", "title"):
                return _error(400, f"unsupported filter {filter_text!r}")
            titles = [title for title in titles if title == match["value"]]
        return _json([self._vault_json(title) for title in titles])

    def _list_items(self, vault: str, filter_text: str | None) -> Reply:
        titles = list(self._vaults[vault])
        if filter_text is not None:
            match = _FILTER.match(filter_text)
            if match is None or match["attribute"] != "title":
                return _error(400, f"unsupported filter {filter_text!r}")
            titles = [title for title in titles if title == match["value"]]
        return _json(
            [self._summary_json(vault, title, self._vaults[vault][title]) for title in titles]
        )

    def _vault_json(self, title: str) -> dict[str, Any]:
        return {
            "id": self.vault_id(title),
            "name": title,
            "description": "",
            "attributeVersion": 1,
            "contentVersion": len(self._vaults[title]) + 1,
            "items": len(self._vaults[title]),
            "type": "USER_CREATED",
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
        }

    def _summary_json(self, vault: str, title: str, spec: ItemSpec) -> dict[str, Any]:
        return {
            "id": self.item_id(vault, title),
            "title": title,
            "vault": {"id": self.vault_id(vault)},
            "category": "LOGIN" if isinstance(spec, str) else "API_CREDENTIAL",
            "urls": [],
            "favorite": False,
            "tags": [],
            "version": 1,
            "trashed": False,
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
            "lastEditedBy": make_id("user"),
        }

    def _item_json(self, vault: str, title: str, spec: ItemSpec) -> dict[str, Any]:
        if isinstance(spec, str):
            fields: list[dict[str, Any]] = [
                {
                    "id": "username",
                    "type": "STRING",
                    "purpose": "USERNAME",
                    "label": "username",
                    "value": "admin",
                },
                {
                    "id": "password",
                    "type": "CONCEALED",
                    "purpose": "PASSWORD",
                    "label": "password",
                    "value": spec,
                },
                {"id": "notesPlain", "type": "STRING", "purpose": "NOTES", "label": "notesPlain"},
            ]
        else:
            fields = spec
        return {
            **self._summary_json(vault, title, spec),
            "sections": [],
            "fields": fields,
        }


def _json(body: Any) -> Reply:
    return Reply(200, json.dumps(body).encode(), content_type="application/json")


def _error(status: int, message: str) -> Reply:
    return Reply(
        status,
        json.dumps({"status": status, "message": message}).encode(),
        content_type="application/json",
    )
