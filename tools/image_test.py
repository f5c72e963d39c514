"""``make image-test``: build the image with the engine there is, measure it, run it.

1. The base image (``tools/image_base.sh``): already there, else pulled, else (no registry
   reachable) a local stand-in of the same name made from Debian's packages.
2. The image, with Docker, or with podman in Docker's format (podman's default OCI format
   drops the ``HEALTHCHECK``). podman builds get this machine's CA bundle and a pip and a
   poetry configuration that use it, mounted for the build alone: downloads inside a build
   trust only the certificates the image carries, and a network that inspects TLS signs
   with its own.
3. The sizes: the base, the image, the image over its base; then the same for the image
   built with ``EXTRAS=stream`` (PyAV, for cameras that stream), on the first's layers.
4. ``tests/deploy/test_image.py`` against the image, with the engine and the image named in
   the environment (:data:`IMAGE_ENV`, :data:`ENGINE_ENV`); without them those tests skip.

Only the standard library: it drives the engine's command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

CHECKOUT = Path(__file__).resolve().parent.parent
BASE = "docker.io/library/python:3.11-slim-bookworm"
STAND_IN_LABEL = "snapshot-processor.stand-in"  # set by image_base.sh on the stand-in
IMAGE_ENV = "IMAGE_TEST_IMAGE"
STREAM_IMAGE_ENV = "IMAGE_TEST_STREAM_IMAGE"
ENGINE_ENV = "IMAGE_TEST_ENGINE"
TESTS = "tests/deploy/test_image.py"
# The kernel's highest process id: a container's process limit above it was refused too.
PID_MAX = Path("/proc/sys/kernel/pid_max")
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
)
MB = 1_000_000  # as docker and podman print sizes


def engine_answers(engine: str) -> bool:
    """Whether ``engine`` is installed and (Docker) its daemon answers."""
    if shutil.which(engine) is None:
        return False
    probe = [engine, "info"] if engine == "docker" else [engine, "--version"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def find_engine() -> str | None:
    """Docker when its daemon answers, else podman when installed, else None."""
    return next((engine for engine in ("docker", "podman") if engine_answers(engine)), None)


def ca_bundle() -> Path | None:
    """The CA bundle this machine's own downloads trust."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), os.environ.get("REQUESTS_CA_BUNDLE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return next((Path(path) for path in CA_BUNDLES if Path(path).is_file()), None)


def build_home(folder: Path, bundle: Path) -> Path:
    """A home for the build's root user, mounted over ``/root`` (which every base has, so
    no empty mount point is left in the image): the CA bundle, and pip's and poetry's user
    configurations naming it. Poetry also keeps its download cache there, out of the image."""
    home = folder / "build-home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pypoetry").mkdir(parents=True)
    shutil.copyfile(bundle, home / "ca-bundle.crt")
    inside = "/root/ca-bundle.crt"
    (home / ".config" / "pip" / "pip.conf").write_text(f"[global]\ncert = {inside}\n")
    # Poetry takes a certificate per configured repository, matched by host: the index
    # pyproject.toml names, and the host its files come from.
    repositories = {
        "pypi-simple": "https://pypi.org/simple/",
        "files": "https://files.pythonhosted.org/",
    }
    (home / ".config" / "pypoetry" / "config.toml").write_text(
        "".join(
            f'[repositories.{name}]\nurl = "{url}"\n[certificates.{name}]\ncert = "{inside}"\n'
            for name, url in repositories.items()
        )
    )
    return home


def build_command(
    engine: str, image: str, extras: str, home: Path | None, context: Path = CHECKOUT
) -> list[str]:
    """The engine's build command for ``image``."""
    command = [engine, "build", "-t", image]
    if engine == "podman":
        # --network host: the build's downloads go out as this machine's would.
        command += ["--format", "docker", "--network", "host"]
        if home is not None:
            command += ["-v", f"{home}:/root"]
    if extras:
        command += ["--build-arg", f"EXTRAS={extras}"]
    return [*command, str(context)]


def containers_conf(folder: Path, env: Mapping[str, str]) -> Path | None:
    """A ``containers.conf`` for podman's runs when its own defaults cannot start one, else
    None. podman raises the open-file and process limits of a container to its defaults,
    which needs CAP_SYS_RESOURCE; without it (inside a container or a sandbox) every run
    fails. The limits written are this process's own, which need nothing raised."""
    if env.get("CONTAINERS_CONF"):
        return None
    probe = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", BASE, "true"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=120,
    )
    if probe.returncode == 0 or "rlimit" not in probe.stderr:
        return None
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    with contextlib.suppress(OSError, ValueError):
        nproc = min(nproc, int(PID_MAX.read_text()))
    conf = folder / "containers.conf"
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    )
    return conf


def image_size(engine: str, image: str, env: Mapping[str, str]) -> int:
    """The image's size in bytes, uncompressed, as the engine counts it."""
    done = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        env=dict(env),
        check=True,
    )
    return int(done.stdout.strip())


def is_stand_in(engine: str, image: str, env: Mapping[str, str]) -> bool:
    done = subprocess.run(
        [engine, "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True,
        text=True,
        env=dict(env),
    )
    return STAND_IN_LABEL in done.stdout


def _gzipped_size(stream: IO[bytes]) -> int:
    """Bytes of ``stream`` once gzipped at the level registries' layers usually have."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    size = 0
    while chunk := stream.read(1 << 20):
        size += len(packer.compress(chunk))
    return size + len(packer.flush())


def compressed_over_base(engine: str, image: str, env: Mapping[str, str], folder: Path) -> int:
    """What a pull of the image downloads when the base is already there: its own layers,
    gzipped. They follow the base's in the saved archive's manifest."""
    base_layers = json.loads(
        subprocess.run(
            [engine, "image", "inspect", "--format", "{{json .RootFS.Layers}}", BASE],
            capture_output=True,
            text=True,
            env=dict(env),
            check=True,
        ).stdout
    )
    archive = folder / "image.tar"
    subprocess.run(
        [engine, "save", "-o", str(archive), image], capture_output=True, env=dict(env), check=True
    )
    try:
        with tarfile.open(archive) as saved:
            manifest = saved.extractfile("manifest.json")
            assert manifest is not None
            layers = json.load(manifest)[0]["Layers"]
            total = 0
            for name in layers[len(base_layers) :]:
                layer = saved.extractfile(name)
                assert layer is not None
                total += _gzipped_size(layer)
    finally:
        archive.unlink()
    return total


def sizes_report(engine: str, image: str, env: Mapping[str, str], folder: Path) -> list[str]:
    """Lines giving the base's, the image's and the difference's sizes."""
    base, built = image_size(engine, BASE, env), image_size(engine, image, env)
    kind = "local stand-in" if is_stand_in(engine, BASE, env) else "from its registry"
    download = compressed_over_base(engine, image, env, folder)
    return [
        "image sizes (MB = 10^6 bytes):",
        f"  base   {BASE} ({kind}): {base / MB:.1f} MB",
        f"  image  {image}: {built / MB:.1f} MB",
        f"  image over its base: {(built - base) / MB:.1f} MB "
        f"({download / MB:.1f} MB gzipped, what a pull downloads)",
    ]


def _step(what: str, command: Sequence[str], env: Mapping[str, str], log: Path | None) -> float:
    """Run ``command``, its output to ``log`` (shown if it fails) or to ours; its seconds."""
    print(f"image-test: {what}", flush=True)
    started = time.monotonic()
    if log is None:
        done = subprocess.run(command, env=dict(env), cwd=CHECKOUT)
    else:
        with log.open("wb") as output:
            done = subprocess.run(
                command, env=dict(env), cwd=CHECKOUT, stdout=output, stderr=subprocess.STDOUT
            )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        if log is not None:
            sys.stdout.write(log.read_text(errors="replace")[-6000:])
        raise SystemExit(f"image-test: {what} failed (exit code {done.returncode})")
    print(f"image-test: {what}: {seconds:.0f} s", flush=True)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.image_test [--engine E] [--image NAME] [--extras local] [--no-tests]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--engine", choices=("docker", "podman"), default=None)
    parser.add_argument("--image", default="snapshot-processor:latest")
    parser.add_argument("--extras", default="", help="the build's EXTRAS (local)")
    parser.add_argument(
        "--stream-image",
        default="snapshot-processor:stream",
        help="also built, with EXTRAS=stream; empty: not built (its tests skip)",
    )
    parser.add_argument("--no-tests", action="store_true", help="build and measure only")
    args = parser.parse_args(argv)

    engine = args.engine or find_engine()
    if engine is None or not engine_answers(engine):
        print("image-test: neither Docker (with its daemon) nor podman is here", file=sys.stderr)
        return 2
    env = {**os.environ, "ENGINE": engine}
    with tempfile.TemporaryDirectory(prefix="image-test-") as scratch:
        folder = Path(scratch)
        _step("base image", ["sh", str(CHECKOUT / "tools" / "image_base.sh")], env, None)
        bundle = ca_bundle() if engine == "podman" else None
        home = build_home(folder, bundle) if bundle is not None else None
        _step(
            f"build {args.image} with {engine}",
            build_command(engine, args.image, args.extras, home),
            env,
            folder / "build.log",
        )
        for line in sizes_report(engine, args.image, env, folder):
            print(line, flush=True)
        if args.stream_image:
            _step(
                f"build {args.stream_image} with {engine} (EXTRAS=stream)",
                build_command(engine, args.stream_image, "stream", home),
                env,
                folder / "build-stream.log",
            )
            for line in sizes_report(engine, args.stream_image, env, folder)[2:]:
                print(line, flush=True)
        if args.no_tests:
            return 0
        conf = containers_conf(folder, env) if engine == "podman" else None
        if conf is not None:
            env["CONTAINERS_CONF"] = str(conf)
            print(f"image-test: podman runs with {conf.name}: limits this machine allows")
        env |= {IMAGE_ENV: args.image, ENGINE_ENV: engine, STREAM_IMAGE_ENV: args.stream_image}
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "image", TESTS]
        return subprocess.run(command, env=env, cwd=CHECKOUT).returncode


if __name__ == "__main__":
    sys.exit(main())
