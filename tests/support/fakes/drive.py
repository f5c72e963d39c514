"""A loopback Google Drive: the v2 files API and the OAuth endpoints, enough for pydrive2.

One server answers both:

- ``/drive/v2/files`` (list, get, insert of metadata, patch, update, delete) and
  ``/upload/drive/v2/files`` (``uploadType=resumable`` as pydrive2 always uses it, plus
  ``multipart`` and ``media``), every call checked for a ``Bearer`` access token it issued;
- ``/token`` (``refresh_token``, ``authorization_code`` with PKCE, and the service
  accounts' ``jwt-bearer`` grant, whose RS256 signature is verified) and ``/auth``, the
  consent page, which answers at once with the redirect a browser would follow.

Point a client at :attr:`base_url` + ``/`` (the API root) and ``/token``. Tests script
trouble: :meth:`fail` answers the next matching calls with an error (optionally after
doing the work, as when an answer is lost), :meth:`corrupt_md5` makes the next upload's
checksum wrong, :meth:`revoke` makes a refresh token ``invalid_grant``, and
:meth:`expire_access_tokens` (or ``token_uses``) makes the next call with an old token a
401. Every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.support.fakes import LoopbackServer, Reply, Request

FOLDER_MIME = "application/vnd.google-apps.folder"
ROOT_ID = "root-folder-id"
JSON_TYPE = "application/json; charset=UTF-8"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class DriveFile:
    """A file or folder the fake holds."""

    id: str
    title: str
    mime_type: str
    parents: list[str]
    created: datetime
    content: bytes = b""
    starred: bool = False
    trashed: bool = False
    md5_override: str | None = None

    @property
    def is_folder(self) -> bool:
        """True for a folder."""
        return self.mime_type == FOLDER_MIME

    def resource(self) -> dict[str, Any]:
        """The v2 ``File`` resource as Drive returns it."""
        link_kind = "drive/folders" if self.is_folder else "file/d"
        body: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "title": self.title,
            "mimeType": self.mime_type,
            "parents": [
                {"kind": "drive#parentReference", "id": parent, "isRoot": parent == ROOT_ID}
                for parent in self.parents
            ],
            "labels": {
                "starred": self.starred,
                "trashed": self.trashed,
                "hidden": False,
                "restricted": False,
                "viewed": True,
            },
            "createdDate": _rfc3339(self.created),
            "modifiedDate": _rfc3339(self.created),
            "alternateLink": f"https://drive.google.com/{link_kind}/{self.id}",
        }
        if not self.is_folder:
            body["md5Checksum"] = self.md5_override or hashlib.md5(self.content).hexdigest()
            body["fileSize"] = str(len(self.content))
        return body


@dataclass
class Failure:
    """A scripted error: answer ``times`` matching calls, after ``skip`` matching ones."""

    status: int
    reason: str
    times: int
    skip: int = 0
    after_work: bool = False
    when: Callable[[Request], bool] | None = None
    plain_body: bool = False


@dataclass
class TokenGrant:
    """One call of the token endpoint, as the fake saw it."""

    grant_type: str
    ok: bool


@dataclass
class _Upload:
    metadata: dict[str, Any]
    params: dict[str, list[str]]
    received: bytearray = field(default_factory=bytearray)


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str | None
    scope: str


class FakeDrive(LoopbackServer):
    """The Drive v2 API and Google's OAuth endpoints on 127.0.0.1."""

    def __init__(self, token_lifetime: int = 3600, token_uses: int | None = None) -> None:
        super().__init__("drive")
        self.token_lifetime = token_lifetime
        #: Calls an access token may make before it is answered 401 (None: no limit).
        self.token_uses = token_uses
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._files: dict[str, DriveFile] = {}
        self._clients: dict[str, str] = {}
        self._service_accounts: dict[str, RSAPublicKey] = {}
        self._refresh_tokens: dict[str, str] = {}
        self._revoked: set[str] = set()
        self._access_tokens: dict[str, int] = {}
        self._access_uses: dict[str, int] = {}
        self._codes: dict[str, _Code] = {}
        self._uploads: dict[str, _Upload] = {}
        self._failures: list[Failure] = []
        self._corrupt = 0
        self._requests: list[Request] = []
        self._grants: list[TokenGrant] = []
        self._scopes: list[str] = []

    # --- set-up ---------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The API root to give the client (``GOOGLE_DRIVE_API_URL``)."""
        return self.base_url + "/"

    @property
    def token_uri(self) -> str:
        """The token endpoint."""
        return self.base_url + "/token"

    @property
    def auth_uri(self) -> str:
        """The consent page."""
        return self.base_url + "/auth"

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth client."""
        with self._lock:
            self._clients[client_id] = client_secret

    def issue_refresh_token(self, client_id: str) -> str:
        """A refresh token for this client, as a past consent would have left it."""
        token = "1//refresh-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = client_id
        return token

    def add_service_account(self, email: str, public_key_pem: bytes) -> None:
        """Accept JWTs signed by this key for this service account."""
        key = load_pem_public_key(public_key_pem)
        assert isinstance(key, RSAPublicKey)
        with self._lock:
            self._service_accounts[email] = key

    def add_file(
        self,
        title: str,
        parent: str = ROOT_ID,
        *,
        created: datetime | None = None,
        content: bytes = b"",
        starred: bool = False,
        folder: bool = False,
    ) -> str:
        """Put a file (or folder) straight into the fake; returns its id."""
        with self._lock:
            return self._store(
                title,
                FOLDER_MIME if folder else "image/jpeg",
                [parent],
                content,
                created=created,
                starred=starred,
            ).id

    # --- scripted trouble -------------------------------------------------------------

    def fail(
        self,
        status: int,
        reason: str = "backendError",
        *,
        times: int = 1,
        skip: int = 0,
        after_work: bool = False,
        when: Callable[[Request], bool] | None = None,
        plain_body: bool = False,
    ) -> None:
        """Answer the next ``times`` API calls matching ``when`` (after ``skip`` of them)
        with this status and reason; ``after_work``: do the work first (a lost answer);
        ``plain_body``: an HTML page, as a proxy in the way answers, instead of JSON."""
        with self._lock:
            self._failures.append(
                Failure(status, reason, times, skip, after_work, when, plain_body)
            )

    def move(self, file_id: str, parent: str) -> None:
        """Put a file in another folder, as a person (or the archive) does in Drive."""
        with self._lock:
            self._files[file_id].parents = [parent]

    def recover(self) -> None:
        """Forget every scripted failure still to come: Drive answers normally again."""
        with self._lock:
            self._failures.clear()

    def corrupt_md5(self, times: int = 1) -> None:
        """The next ``times`` uploads are stored with a wrong ``md5Checksum``."""
        with self._lock:
            self._corrupt += times

    def revoke(self, refresh_token: str) -> None:
        """The token endpoint answers ``invalid_grant`` for this refresh token from now on."""
        with self._lock:
            self._revoked.add(refresh_token)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is answered 401 from now on."""
        with self._lock:
            for token in self._access_tokens:
                self._access_tokens[token] = 0

    # --- inspection -------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """Every request so far, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def grants(self) -> list[TokenGrant]:
        """Every call of the token endpoint so far."""
        with self._lock:
            return list(self._grants)

    @property
    def consent_scopes(self) -> list[str]:
        """The scopes asked for on the consent page, one entry per visit."""
        with self._lock:
            return list(self._scopes)

    def files(self, parent: str | None = None, *, folders: bool | None = None) -> list[DriveFile]:
        """Files not trashed, optionally only those in ``parent`` and of one kind."""
        with self._lock:
            return [
                f
                for f in self._files.values()
                if not f.trashed
                and (parent is None or parent in f.parents)
                and (folders is None or f.is_folder == folders)
            ]

    def file(self, file_id: str) -> DriveFile:
        """One file by id."""
        with self._lock:
            return self._files[file_id]

    def path_of(self, file_id: str) -> str:
        """``a/b/c``: the titles from the top folder below root down to the file's parent."""
        with self._lock:
            parts: list[str] = []
            current = self._files[file_id].parents[0]
            while current != ROOT_ID:
                folder = self._files[current]
                parts.append(folder.title)
                current = folder.parents[0]
            return "/".join(reversed(parts))

    # --- HTTP -------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        with self._lock:
            self._requests.append(request)
        if request.path == "/token" and request.method == "POST":
            return self._token(request)
        if request.path == "/auth" and request.method == "GET":
            return self._consent(request)
        if not request.path.startswith(("/drive/v2/", "/upload/drive/v2/")):
            return _error(404, "notFound", f"no such path {request.path}")
        unauthorized = self._check_token(request)
        if unauthorized is not None:
            return unauthorized
        failure = self._take_failure(request)
        if failure is not None and not failure.after_work:
            return _failure_reply(failure)
        reply = self._api(request)
        if failure is not None:
            return _failure_reply(failure)
        return reply

    def _take_failure(self, request: Request) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.when is not None and not failure.when(request):
                    continue
                if failure.skip > 0:
                    failure.skip -= 1
                    return None
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _check_token(self, request: Request) -> Reply | None:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        with self._lock:
            left = self._access_tokens.get(token)
            if left is None or left <= 0:
                return _error(401, "authError", "Invalid Credentials")
            self._access_tokens[token] = left - 1
            self._access_uses[token] = self._access_uses.get(token, 0) + 1
        return None

    def _api(self, request: Request) -> Reply:
        path = request.path
        if path.startswith("/upload/drive/v2/files"):
            return self._upload(request)
        match = re.fullmatch(r"/drive/v2/files(?:/(?P<id>[^/]+))?", path)
        if match is None:
            return _error(404, "notFound", f"no such path {path}")
        file_id = match["id"]
        with self._lock:
            if file_id is None and request.method == "GET":
                return self._list(request)
            if file_id is None and request.method == "POST":
                metadata = json.loads(request.body or b"{}")
                return self._insert(metadata, b"")
            found = self._files.get(file_id or "")
            if found is None:
                return _error(404, "notFound", f"File not found: {file_id}")
            if request.method == "GET":
                return _json(found.resource())
            if request.method in ("PATCH", "PUT"):
                return self._patch(found, request)
            if request.method == "DELETE":
                del self._files[found.id]
                return Reply(204)
        return _error(405, "methodNotAllowed", request.method)

    def _list(self, request: Request) -> Reply:
        try:
            keep = _parse_query(request.param("q") or "")
        except ValueError as exc:
            return _error(400, "invalid", f"Invalid query: {exc}")
        max_results = min(int(request.param("maxResults") or 100), 1000)
        offset = int(request.param("pageToken") or 0)
        matching = [f for f in self._files.values() if keep(f)]
        page = matching[offset : offset + max_results]
        body: dict[str, Any] = {
            "kind": "drive#fileList",
            "items": [f.resource() for f in page],
        }
        if offset + max_results < len(matching):
            # An offset, as Drive's tokens are not: a listing that changes between pages
            # shifts under a client that moves files while paging.
            body["nextPageToken"] = str(offset + max_results)
        return _json(body)

    def _patch(self, found: DriveFile, request: Request) -> Reply:
        metadata = json.loads(request.body or b"{}")
        for parent in (request.param("removeParents") or "").split(","):
            if parent in found.parents:
                found.parents.remove(parent)
        for parent in (request.param("addParents") or "").split(","):
            if parent and parent not in found.parents:
                if parent not in self._files and parent != ROOT_ID:
                    return _error(404, "notFound", f"File not found: {parent}")
                found.parents.append(parent)
        if "title" in metadata:
            found.title = metadata["title"]
        labels = metadata.get("labels") or {}
        if "starred" in labels:
            found.starred = bool(labels["starred"])
        if "trashed" in labels:
            found.trashed = bool(labels["trashed"])
        return _json(found.resource())

    def _insert(self, metadata: dict[str, Any], content: bytes) -> Reply:
        parents = [p["id"] for p in metadata.get("parents") or []] or [ROOT_ID]
        for parent in parents:
            if parent not in self._files and parent not in (ROOT_ID, "root"):
                return _error(404, "notFound", f"File not found: {parent}")
        parents = [ROOT_ID if p == "root" else p for p in parents]
        stored = self._store(
            metadata.get("title") or "Untitled",
            metadata.get("mimeType") or "application/octet-stream",
            parents,
            content,
        )
        if self._corrupt and not stored.is_folder:
            self._corrupt -= 1
            stored.md5_override = "0" * 32
        return _json(stored.resource())

    def _store(
        self,
        title: str,
        mime_type: str,
        parents: list[str],
        content: bytes,
        *,
        created: datetime | None = None,
        starred: bool = False,
    ) -> DriveFile:
        file_id = f"f{next(self._ids):05d}{secrets.token_hex(4)}"
        stored = DriveFile(
            file_id,
            title,
            mime_type,
            list(parents),
            created or datetime.now(UTC),
            content,
            starred=starred,
        )
        self._files[file_id] = stored
        return stored

    def _upload(self, request: Request) -> Reply:
        kind = request.param("uploadType")
        with self._lock:
            if kind == "resumable" and request.method == "POST":
                upload_id = secrets.token_hex(8)
                metadata = json.loads(request.body or b"{}")
                self._uploads[upload_id] = _Upload(metadata, request.query)
                location = f"{self.base_url}/upload/drive/v2/files?" + urlencode(
                    {"uploadType": "resumable", "upload_id": upload_id}
                )
                return Reply(200, b"", JSON_TYPE, {"Location": location})
            if kind == "resumable" and request.method == "PUT":
                return self._resumable_chunk(request)
            if kind == "multipart" and request.method == "POST":
                metadata, content = _split_multipart(request)
                return self._insert(metadata, content)
            if kind == "media" and request.method == "POST":
                return self._insert({}, request.body)
        return _error(400, "badRequest", f"unsupported upload {kind} {request.method}")

    def _resumable_chunk(self, request: Request) -> Reply:
        upload = self._uploads.get(request.param("upload_id") or "")
        if upload is None:
            return _error(404, "notFound", "no such upload session")
        span = request.headers.get("content-range", "")
        match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", span)
        if span and match is None:
            return _error(400, "badContentRange", span)
        total = None if match is None or match[3] == "*" else int(match[3])
        if match is not None and match[1] is not None:
            if int(match[1]) != len(upload.received):
                return _error(400, "badContentRange", "chunk does not follow")
            upload.received.extend(request.body)
        elif not span:
            upload.received.extend(request.body)
            total = len(upload.received)
        if total is not None and len(upload.received) >= total:
            del self._uploads[request.param("upload_id") or ""]
            return self._insert(upload.metadata, bytes(upload.received))
        headers = {"Range": f"bytes=0-{len(upload.received) - 1}"} if upload.received else {}
        return Reply(308, b"", "text/plain", headers)

    # --- OAuth ------------------------------------------------------------------------

    def _consent(self, request: Request) -> Reply:
        client_id = request.param("client_id") or ""
        redirect_uri = request.param("redirect_uri") or ""
        with self._lock:
            known = client_id in self._clients
            self._scopes.append(request.param("scope") or "")
        if not known or request.param("response_type") != "code":
            return Reply(400, b"invalid_client or response_type")
        if not redirect_uri.startswith(("http://127.0.0.1:", "http://localhost:")):
            return Reply(400, b"redirect_uri must be a loopback address")
        code = "4/code-" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = _Code(
                client_id,
                redirect_uri,
                request.param("code_challenge"),
                request.param("scope") or "",
            )
        query = {"state": request.param("state") or "", "code": code, "scope": "granted"}
        return Reply(302, b"", headers={"Location": f"{redirect_uri}?{urlencode(query)}"})

    def _token(self, request: Request) -> Reply:
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        grant_type = form.get("grant_type", "")
        if grant_type == "refresh_token":
            reply = self._refresh_grant(form)
        elif grant_type == "authorization_code":
            reply = self._code_grant(form)
        elif grant_type == JWT_GRANT:
            reply = self._jwt_grant(form)
        else:
            reply = _oauth_error("unsupported_grant_type")
        with self._lock:
            self._grants.append(TokenGrant(grant_type, reply.status == 200))
        return reply

    def _client_ok(self, form: dict[str, str]) -> bool:
        return self._clients.get(form.get("client_id", "")) == form.get("client_secret")

    def _refresh_grant(self, form: dict[str, str]) -> Reply:
        with self._lock:
            if not self._client_ok(form):
                return _oauth_error("invalid_client", status=401)
            token = form.get("refresh_token", "")
            if token in self._revoked or token not in self._refresh_tokens:
                return _oauth_error("invalid_grant", "Token has been expired or revoked.")
        return self._access_reply()

    def _code_grant(self, form: dict[str, str]) -> Reply:
        with self._lock:
            if not self._client_ok(form):
                return _oauth_error("invalid_client", status=401)
            code = self._codes.pop(form.get("code", ""), None)
        if code is None or code.client_id != form.get("client_id"):
            return _oauth_error("invalid_grant", "Malformed auth code.")
        if code.redirect_uri != form.get("redirect_uri"):
            return _oauth_error("redirect_uri_mismatch", "Bad Request")
        if code.challenge is not None:
            verifier = form.get("code_verifier", "").encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            if digest.decode() != code.challenge:
                return _oauth_error("invalid_grant", "Missing code verifier.")
        refresh = self.issue_refresh_token(code.client_id)
        return self._access_reply(refresh_token=refresh, scope=code.scope)

    def _jwt_grant(self, form: dict[str, str]) -> Reply:
        try:
            header_b64, claims_b64, signature_b64 = form.get("assertion", "").split(".")
            claims = json.loads(_b64decode(claims_b64))
            header = json.loads(_b64decode(header_b64))
            signature = _b64decode(signature_b64)
        except ValueError:
            return _oauth_error("invalid_grant", "Invalid JWT")
        with self._lock:
            key = self._service_accounts.get(claims.get("iss", ""))
        if key is None or header.get("alg") != "RS256":
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        try:
            key.verify(
                signature,
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        if claims.get("aud") != self.token_uri or not claims.get("iat", 0) - 300 <= now:
            return _oauth_error("invalid_grant", "Invalid JWT: audience or time")
        if now > claims.get("exp", 0) or not claims.get("scope"):
            return _oauth_error("invalid_grant", "Invalid JWT: expired or no scope")
        return self._access_reply()

    def _access_reply(self, **extra: str) -> Reply:
        token = "ya29.access-" + secrets.token_urlsafe(24)
        with self._lock:
            self._access_tokens[token] = self.token_uses if self.token_uses is not None else 10**9
        body = {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
            **extra,
        }
        return _json(body)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def _json(body: dict[str, Any], status: int = 200) -> Reply:
    return Reply(status, json.dumps(body).encode(), JSON_TYPE)


def _error(status: int, reason: str, message: str) -> Reply:
    body = {
        "error": {
            "errors": [{"domain": "global", "reason": reason, "message": message}],
            "code": status,
            "message": message,
        }
    }
    headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
    return Reply(status, json.dumps(body).encode(), JSON_TYPE, headers if status == 401 else {})


def _failure_reply(failure: Failure) -> Reply:
    if failure.plain_body:
        page = f"<html><body><h1>{failure.status} Bad Gateway</h1></body></html>"
        return Reply(failure.status, page.encode(), "text/html")
    reply = _error(failure.status, failure.reason, f"scripted {failure.reason}")
    if failure.status == 429:
        reply.headers["Retry-After"] = "1"
    return reply


def _oauth_error(error: str, description: str = "", status: int = 400) -> Reply:
    body = {"error": error, "error_description": description} if description else {"error": error}
    return _json(body, status)


def _split_multipart(request: Request) -> tuple[dict[str, Any], bytes]:
    content_type = request.headers.get("content-type", "")
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
    )
    parts = [part.get_payload(decode=True) for part in message.iter_parts()]
    payloads = [part if isinstance(part, bytes) else b"" for part in parts]
    metadata = json.loads(payloads[0] or b"{}") if payloads else {}
    return metadata, payloads[1] if len(payloads) > 1 else b""


_CLAUSE = re.compile(
    r"""\s*(?:
        (?P<field>title|mimeType|createdDate|modifiedDate)\s*(?P<op>=|!=|<=|>=|<|>)\s*'(?P<value>(?:[^'\\]|\\.)*)'
      | '(?P<parent>(?:[^'\\]|\\.)*)'\s+in\s+parents
      | (?P<label>trashed|starred)\s*(?P<lop>=|!=)\s*(?P<bool>true|false)
    )\s*""",
    re.VERBOSE,
)


def _parse_query(q: str) -> Callable[[DriveFile], bool]:
    """A predicate from a Drive v2 ``q`` of clauses joined by ``and`` (what clients send)."""
    tests: list[Callable[[DriveFile], bool]] = []
    position = 0
    while position < len(q):
        match = _CLAUSE.match(q, position)
        if match is None:
            raise ValueError(f"cannot parse at {q[position:]!r}")
        tests.append(_clause_test(match))
        position = match.end()
        joiner = re.compile(r"and\s+", re.IGNORECASE).match(q, position)
        if joiner is not None:
            position = joiner.end()
        elif position < len(q):
            raise ValueError(f"expected 'and' at {q[position:]!r}")
    return lambda f: all(test(f) for test in tests)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _clause_test(match: re.Match[str]) -> Callable[[DriveFile], bool]:
    if match["parent"] is not None:
        parent = _unescape(match["parent"])
        parent = ROOT_ID if parent == "root" else parent
        return lambda f: parent in f.parents
    if match["label"] is not None:
        wanted = (match["bool"] == "true") == (match["lop"] == "=")
        label = match["label"]
        return lambda f: getattr(f, label) == wanted
    name, op, value = match["field"], match["op"], _unescape(match["value"])

    def actual(f: DriveFile) -> str:
        if name == "title":
            return f.title
        if name == "mimeType":
            return f.mime_type
        return _rfc3339(f.created)

    compare: dict[str, Callable[[str, str], bool]] = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
    }
    return lambda f: compare[op](actual(f), value)
