"""Secrets resolved in order: environment, Docker secrets in /run/secrets, 1Password Connect."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pylib.observe.redact import register_secret

log = logging.getLogger(__name__)

DOCKER_SECRETS_DIR = Path("/run/secrets")


class SecretSource(Protocol):
    """A store that may hold a secret by name (1Password Connect in production)."""

    def get(self, name: str) -> str | None:
        """The secret's value, or None when the store has no such secret."""


class MissingSecretError(LookupError):
    """A secret that is needed and was found nowhere; the message names it and where we looked."""

    def __init__(self, name: str, looked_in: list[str]) -> None:
        super().__init__(f"secret {name} is not set (looked in: {', '.join(looked_in)})")
        self.name = name


class SecretResolver:
    """Looks a secret up by name in each place, first hit wins; registers it for redaction."""

    def __init__(
        self,
        env: Mapping[str, str],
        secrets_dir: Path = DOCKER_SECRETS_DIR,
        store: SecretSource | None = None,
        store_label: str = "1Password",
    ) -> None:
        self.env = env
        self.secrets_dir = secrets_dir
        self.store = store
        self.store_label = store_label

    def get(self, name: str) -> str | None:
        """The secret's value, or None if it is set nowhere."""
        value = self.env.get(name) or self._from_file(name)
        if not value and self.store is not None:
            value = self.store.get(name)
        if value:
            register_secret(value)
        return value or None

    def require(self, name: str) -> str:
        """The secret's value; raises :class:`MissingSecretError` naming it if absent."""
        value = self.get(name)
        if value is None:
            raise MissingSecretError(name, self.places(name))
        return value

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if callable(close):
            close()

    def places(self, name: str) -> list[str]:
        """Where :meth:`get` looks, for error messages."""
        places = ["environment", str(self.secrets_dir / name)]
        if self.store is not None:
            places.append(self.store_label)
        return places

    def _from_file(self, name: str) -> str | None:
        # Docker secrets are files named after the secret; accept lower case too.
        for candidate in (name, name.lower()):
            path = self.secrets_dir / candidate
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot read secret file %s: %s", path, exc.strerror)
                continue
            # Editors and `echo` add a trailing newline that is not part of the secret.
            return text.rstrip("\r\n")
        return None


class SecretStoreSettings(BaseModel):
    """Where secrets are looked up beside the environment: the Docker secrets folder, and
    a 1Password Connect vault when all three of its settings are given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op_connect_host: str | None = Field(None, alias="OP_CONNECT_HOST")
    op_connect_token: SecretStr | None = Field(
        None, alias="OP_CONNECT_TOKEN", json_schema_extra={"secret": True}
    )
    op_vault: str | None = Field(None, alias="OP_VAULT")
    secrets_dir: Path = Field(DOCKER_SECRETS_DIR, alias="SECRETS_DIR")

    @model_validator(mode="after")
    def _consistent(self) -> SecretStoreSettings:
        if self.op_connect_host and not (self.op_connect_token and self.op_vault):
            raise ValueError(
                "OP_CONNECT_HOST is set, so OP_CONNECT_TOKEN and OP_VAULT are needed too"
            )
        return self
