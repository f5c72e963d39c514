"""HTTP auth for camera requests: basic, and digest (RFC 7616) with its nonce reused.

A client holds one auth object and uses it one request at a time (under its lock), so
the digest challenge it last answered is kept between snapshots: later requests carry
the answer at once, with a rising nonce count, instead of costing a 401 round trip each.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Auth", "BasicAuth", "DigestAuth", "parse_challenges"]


class Auth:
    """No auth: the base of the others (credentials travel some other way)."""

    #: Whether this sends the camera's credentials itself (else a URL's may be used).
    sends_credentials = False

    def header(self, method: str, uri: str) -> str | None:
        """The ``Authorization`` value for a request, or None to send none."""
        return None

    def challenged(self, challenges: Sequence[str]) -> bool:
        """A 401 arrived with these ``WWW-Authenticate`` values: True if the request is
        worth sending once more with what they ask for."""
        return False


class BasicAuth(Auth):
    """``Authorization: Basic``, user and password encoded as UTF-8 (RFC 7617)."""

    sends_credentials = True

    def __init__(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._value = f"Basic {token}"

    def header(self, method: str, uri: str) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<BasicAuth>"


# Possessive quantifiers: nothing is tried twice, so a hostile header costs linear time
# (with plain ones, 64 KB of spaces took 48 s of the GIL).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]++"
_SCHEME = re.compile(rf"\s*+,?\s*+({_TOKEN})(?:\s++|$)(?!\s*+=)")
_PARAM = re.compile(rf'\s*+,?\s*+({_TOKEN})\s*+=\s*+(?:"((?:[^"\\]|\\.)*+)"|([^\s,"]*+))')
# A camera's challenge is a few hundred bytes; more is not read.
_MAX_VALUES = 8
_MAX_VALUE_LENGTH = 4096


def parse_challenges(values: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """The challenges in ``WWW-Authenticate`` values: (scheme in lower case, params with
    lower-case names). A value may hold several (``Digest realm=..., Basic realm=...``)."""
    found: list[tuple[str, dict[str, str]]] = []
    for value in values[:_MAX_VALUES]:
        if len(value) > _MAX_VALUE_LENGTH:
            continue
        position = 0
        while position < len(value):
            scheme = _SCHEME.match(value, position)
            if scheme is None:
                break
            params: dict[str, str] = {}
            position = scheme.end()
            while (param := _PARAM.match(value, position)) is not None:
                quoted, bare = param.group(2), param.group(3)
                text = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                params[param.group(1).lower()] = text
                position = param.end()
            found.append((scheme.group(1).lower(), params))
    return found


_HASHES: dict[str, Callable[[bytes], str]] = {
    "md5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "sha-256": lambda data: hashlib.sha256(data).hexdigest(),
}
# Most secure first: what a camera offers several of gets the best of them.
_PREFERENCE = ("sha-256", "md5")


@dataclass(frozen=True)
class _Challenge:
    realm: str
    nonce: str
    opaque: str | None
    algorithm: str | None  # as the camera named it, sent back as it came (or not at all)
    hash: Callable[[bytes], str]
    session: bool
    qop: str | None  # "auth", or None for an RFC 2069 camera that offers no qop


def _challenge(params: dict[str, str]) -> _Challenge | None:
    """A digest challenge we can answer, or None (unknown algorithm, auth-int only)."""
    if "nonce" not in params:
        return None
    algorithm = params.get("algorithm")
    name = (algorithm or "MD5").lower()
    session = name.endswith("-sess")
    hasher = _HASHES.get(name.removesuffix("-sess"))
    if hasher is None:
        return None
    offered = params.get("qop")
    if offered is None:
        if session:
            return None  # its answer needs a cnonce, which only goes with a qop
        qop = None
    elif "auth" in (item.strip().lower() for item in offered.split(",")):
        qop = "auth"
    else:
        return None  # auth-int would need the body hashed; no camera needs it for a GET
    return _Challenge(
        realm=params.get("realm", ""),
        nonce=params["nonce"],
        opaque=params.get("opaque"),
        algorithm=algorithm,
        hash=hasher,
        session=session,
        qop=qop,
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestAuth(Auth):
    """HTTP digest auth: MD5 or SHA-256 (also their ``-sess`` forms), qop ``auth`` or none."""

    sends_credentials = True

    def __init__(
        self, user: str, password: str, *, cnonce: Callable[[], str] | None = None
    ) -> None:
        self._user = user
        self._password = password
        # The client's nonce: random, 64 bits; fixed only to check against known answers.
        self._cnonce = cnonce or (lambda: os.urandom(8).hex())
        self._challenge: _Challenge | None = None
        self._count = 0

    def __repr__(self) -> str:
        return "<DigestAuth>"

    def header(self, method: str, uri: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        self._count += 1
        digest = challenge.hash
        count = f"{self._count:08x}"
        cnonce = self._cnonce()
        secret = digest(f"{self._user}:{challenge.realm}:{self._password}".encode())
        if challenge.session:
            secret = digest(f"{secret}:{challenge.nonce}:{cnonce}".encode())
        target = digest(f"{method}:{uri}".encode())
        if challenge.qop is None:
            response = digest(f"{secret}:{challenge.nonce}:{target}".encode())
        else:
            response = digest(
                f"{secret}:{challenge.nonce}:{count}:{cnonce}:{challenge.qop}:{target}".encode()
            )
        fields = [
            f"username={_quote(self._user)}",
            f"realm={_quote(challenge.realm)}",
            f"nonce={_quote(challenge.nonce)}",
            f"uri={_quote(uri)}",
            f"response={_quote(response)}",
        ]
        if challenge.algorithm is not None:
            fields.append(f"algorithm={challenge.algorithm}")
        if challenge.opaque is not None:
            fields.append(f"opaque={_quote(challenge.opaque)}")
        if challenge.qop is not None:
            fields += [f"qop={challenge.qop}", f"nc={count}", f"cnonce={_quote(cnonce)}"]
        return "Digest " + ", ".join(fields)

    def challenged(self, challenges: Sequence[str]) -> bool:
        offered = {
            (params.get("algorithm") or "MD5").lower(): params
            for scheme, params in reversed(parse_challenges(challenges))
            if scheme == "digest"
        }
        for name in _PREFERENCE:
            for algorithm in (name, f"{name}-sess"):
                params = offered.get(algorithm)
                chosen = _challenge(params) if params is not None else None
                if chosen is not None:
                    self._challenge, self._count = chosen, 0
                    return True
        return False
