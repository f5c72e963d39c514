"""`make setup` and the compose file it writes: generated secrets in a private .env,
idempotent runs, `docker-compose config` on the result, and the daemon's own
check-config on the environment compose gives the container."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML comes with moto; it ships no types (pyproject's mypy overrides)

from snapshot_processor import config
from tests.support.paths import CHECKOUT
from tools.compose_setup import ALWAYS_SET, host_timezone

MASQUERADE = "192.0.2.10"
GENERATED = ("FTP_PASS", "HTTP_TOKEN", "RABBITMQ_PASSWORD")


def _make_setup(target: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["make", "-s", "-C", str(CHECKOUT), "setup", f"SETUP_DIR={target}", *variables],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def _env(target: Path) -> dict[str, str]:
    values = {}
    for line in (target / ".env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_setup_writes_the_compose_file_a_private_env_and_the_folders(tmp_path: Path) -> None:
    target = tmp_path / "server"
    done = _make_setup(target, f"FTP_MASQUERADE_ADDRESS={MASQUERADE}")
    assert "wrote" in done.stdout
    compose = (target / "docker-compose.yml").read_text()
    assert (CHECKOUT / "docker-compose.template").read_text() in compose
    env_file = target / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = _env(target)
    for name in GENERATED:
        assert len(values[name]) >= 24, name
    assert len({values[name] for name in GENERATED}) == 3
    assert values["FTP_MASQUERADE_ADDRESS"] == MASQUERADE
    assert values["DEVICE_NAME"]
    assert values["TZ"] == host_timezone()
    assert (target / "config" / "snapshot-processor.toml").is_file()
    for folder in ("data", "secrets"):
        assert (target / folder).is_dir()
        if os.geteuid() == 0:
            owner = (target / folder).stat()
            assert (owner.st_uid, owner.st_gid) == (1000, 1000), folder
    if os.geteuid() not in (0, 1000):
        assert "sudo chown -R 1000:1000" in done.stdout


def test_setup_never_overwrites_without_force_and_force_keeps_the_passwords(
    tmp_path: Path,
) -> None:
    _make_setup(tmp_path)
    first = _env(tmp_path)
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose.read_text() + "# my change\n")
    again = _make_setup(tmp_path)
    assert "kept" in again.stdout
    assert compose.read_text().endswith("# my change\n")
    assert _env(tmp_path) == first

    (tmp_path / ".env").write_text(
        "\n".join(f"{k}={v}" for k, v in first.items() if k != "HTTP_TOKEN") + "\n"
    )
    forced = _make_setup(tmp_path, "FORCE=1")
    assert "kept (make setup FORCE=1" not in forced.stdout
    assert not compose.read_text().endswith("# my change\n")
    rewritten = _env(tmp_path)
    assert rewritten["FTP_PASS"] == first["FTP_PASS"]  # cameras keep their password
    assert rewritten["HTTP_TOKEN"] not in ("", first["HTTP_TOKEN"])  # the missing one is new
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_the_template_has_no_empty_defaults_and_env_holds_what_it_needs(tmp_path: Path) -> None:
    # podman-compose 1.0 leaves ${VAR:-} literal: an FTP login with the password
    # "${FTP_PASS:-}" worked, and passive replies named "${FTP_MASQUERADE_ADDRESS:-}".
    template = (CHECKOUT / "docker-compose.template").read_text()
    uncommented = "\n".join(line.split("#")[0] for line in template.splitlines())
    assert ":-}" not in uncommented
    bare = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", uncommented))
    assert {"FTP_PASS", "FTP_MASQUERADE_ADDRESS", "EXTRAS"} <= bare
    _make_setup(tmp_path)
    assert bare <= set(_env(tmp_path))  # a fresh .env sets every one of them
    # Fully qualified images: podman resolves no short names.
    images = re.findall(r"^\s*image: (\S+)", template, flags=re.MULTILINE)
    assert [i for i in images if not i.startswith("snapshot-processor")] == [
        "docker.io/library/rabbitmq:3-management",
        "docker.io/library/eclipse-mosquitto:2",
    ]


def test_setup_adds_the_keys_an_older_env_lacks_and_keeps_the_rest(tmp_path: Path) -> None:
    _make_setup(tmp_path, f"FTP_MASQUERADE_ADDRESS={MASQUERADE}")
    env_file = tmp_path / ".env"
    older = "".join(
        f"{line}\n" for line in env_file.read_text().splitlines() if not line.startswith(ALWAYS_SET)
    )
    env_file.write_text(older)
    again = _make_setup(tmp_path)
    assert f"added FTP_PASS, FTP_MASQUERADE_ADDRESS, EXTRAS to {env_file}" in again.stdout
    assert env_file.read_text().startswith(older)  # the rest untouched
    values = _env(tmp_path)
    # Empty, as the old template's ${VAR:-} made them: no FTP password appears by itself.
    assert [values[name] for name in ALWAYS_SET] == ["", "", ""]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "added" not in _make_setup(tmp_path).stdout  # once


def test_podman_compose_fills_every_variable_from_env(tmp_path: Path) -> None:
    if shutil.which("podman-compose") is None or shutil.which("podman") is None:
        pytest.skip("podman-compose is not installed (.ci/run installs Debian's)")
    _make_setup(tmp_path, f"FTP_MASQUERADE_ADDRESS={MASQUERADE}")
    project = f"composetest{uuid.uuid4().hex[:8]}"
    try:
        # --dry-run prints the podman commands; it still makes the volumes and network.
        done = subprocess.run(
            ["podman-compose", "-p", project, "--dry-run", "up", "-d"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for volume in ("rabbitmq-data", "mosquitto-data"):
            subprocess.run(
                ["podman", "volume", "rm", "-f", f"{project}_{volume}"], capture_output=True
            )
        subprocess.run(["podman", "network", "rm", "-f", f"{project}_default"], capture_output=True)
    output = done.stdout + done.stderr
    env = _env(tmp_path)
    assert f"-e FTP_PASS={env['FTP_PASS']} " in output, output
    assert f"-e FTP_MASQUERADE_ADDRESS={MASQUERADE} " in output
    assert "${" not in output  # nothing left unfilled


def _compose_config(target: Path) -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's)")
    done = subprocess.run(
        ["docker-compose", "config"], cwd=target, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered: dict[str, Any] = yaml.safe_load(done.stdout)
    return rendered


def test_docker_compose_config_accepts_the_rendered_file(tmp_path: Path) -> None:
    _make_setup(tmp_path, f"FTP_MASQUERADE_ADDRESS={MASQUERADE}")
    rendered = _compose_config(tmp_path)
    broker, daemon = rendered["services"]["rabbitmq"], rendered["services"]["snapshot-processor"]

    # RabbitMQ: healthy before the daemon starts, data on a volume, this machine only.
    assert broker["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert daemon["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert "rabbitmq-data:/var/lib/rabbitmq:rw" in broker["volumes"]
    assert "rabbitmq-data" in rendered["volumes"]
    assert all(port.startswith("127.0.0.1:") for port in broker["ports"])
    assert "guest" not in str(broker["environment"])
    env = _env(tmp_path)
    assert broker["environment"]["RABBITMQ_DEFAULT_PASS"] == env["RABBITMQ_PASSWORD"]

    # The daemon: HTTP published with a token, FTP control and passive ports, folders.
    published = {port["published"] for port in daemon["ports"]}
    assert {8080, 2121, *range(30000, 30010)} == published
    environment = daemon["environment"]
    assert environment["HTTP_BIND"] == "0.0.0.0"
    assert environment["HTTP_TOKEN"] == env["HTTP_TOKEN"]
    assert environment["FTP_PASS"] == env["FTP_PASS"]
    assert environment["FTP_MASQUERADE_ADDRESS"] == MASQUERADE
    assert environment["FTP_PASSIVE_PORTS"] == "30000-30009"
    assert environment["TZ"] == env["TZ"]  # the status page's times in the host's zone
    assert daemon["build"]["args"] == {"EXTRAS": ""}
    mounts = {volume.split(":")[1]: volume for volume in daemon["volumes"]}
    assert mounts["/data/ftp"].startswith(f"{tmp_path}/data:")
    assert mounts["/run/secrets"].endswith(":ro")
    # Optional secrets are files in the mounted folder, none of them required up front.
    assert "secrets" not in daemon
    assert "secrets" not in rendered


def test_the_hosts_time_zone_goes_into_env_and_compose_defaults_to_utc(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    assert host_timezone(etc) == "UTC"  # nothing to go by
    (etc / "localtime").symlink_to("../usr/share/zoneinfo/America/New_York")
    assert host_timezone(etc) == "America/New_York"
    (etc / "timezone").write_text("Europe/Paris\n")
    assert host_timezone(etc) == "Europe/Paris"  # Debian's own file first
    (etc / "timezone").write_text("../../secrets\n")
    assert host_timezone(etc) == "UTC"  # only a zone's name, never a path

    _make_setup(tmp_path / "server")
    env_file = tmp_path / "server" / ".env"
    assert _env(tmp_path / "server")["TZ"] == host_timezone()
    env_file.write_text(
        "".join(
            f"{line}\n" for line in env_file.read_text().splitlines() if not line.startswith("TZ=")
        )
    )
    daemon = _compose_config(tmp_path / "server")["services"]["snapshot-processor"]
    assert daemon["environment"]["TZ"] == "UTC"


def test_without_make_setup_compose_names_what_is_missing(tmp_path: Path) -> None:
    shutil.copy(CHECKOUT / "docker-compose.template", tmp_path / "docker-compose.yml")
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's)")
    done = subprocess.run(
        ["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "run make setup" in done.stderr


def _behind_nat(command: list[str]) -> list[str]:
    """``command`` as in a container on a network of its own: a network namespace and a
    sysfs of its own, showing no network card (this machine's would say host networking)."""
    if not config.host_network():
        return command
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("this machine's network cards show; hiding them needs root and unshare")
    remount = 'mount -t sysfs sysfs /sys && exec "$@"'
    return ["unshare", "--net", "--mount", "sh", "-c", remount, "sh", *command]


def _check_config_in_container(
    environment: dict[str, str], tmp_path: Path, nat: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "snapshot_processor", "check-config"]
    return subprocess.run(
        _behind_nat(command) if nat else command,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT), **environment},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_container_environment_passes_check_config(tmp_path: Path) -> None:
    target = tmp_path / "server"
    _make_setup(target, f"FTP_MASQUERADE_ADDRESS={MASQUERADE}")
    daemon = _compose_config(target)["services"]["snapshot-processor"]
    # As the image runs it, with the container's paths moved into tmp_path.
    environment = {
        **{name: str(value) for name, value in daemon["environment"].items()},
        config.CONTAINER_ENV: "1",
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "ftp"),
        "SECRETS_DIR": str(target / "secrets"),  # empty: every optional secret unset
    }
    good = _check_config_in_container(environment, tmp_path)
    assert good.returncode == 0, good.stderr
    assert "configuration OK" in good.stdout
    assert "warning" not in good.stdout

    # Passive mode on behind NAT with no address to give out: said, not refused.
    environment["FTP_MASQUERADE_ADDRESS"] = ""
    warned = _check_config_in_container(environment, tmp_path)
    assert warned.returncode == 0, warned.stderr
    assert "warning: FTP passive mode is on in a container" in warned.stdout
    assert "FTP_MASQUERADE_ADDRESS" in warned.stdout

    # Outside the image the same settings are fine: no NAT in the way.
    del environment[config.CONTAINER_ENV]
    outside = _check_config_in_container(environment, tmp_path)
    assert "warning" not in outside.stdout


def _sys_net(folder: Path, **cards: bool) -> Path:
    """A fake /sys/class/net: an interface per name, with a ``device`` link if True."""
    devices = folder / "devices"
    devices.mkdir(parents=True)
    for name, has_device in cards.items():
        (folder / name).mkdir()
        if has_device:
            (folder / name / "device").symlink_to(devices)
    return folder


def test_host_networking_is_told_by_a_network_card_in_sight(tmp_path: Path) -> None:
    # A container's own network: a loopback and a veth, both virtual.
    assert not config.host_network(_sys_net(tmp_path / "own", lo=False, eth0=False))
    # The host's: its network card (on a PCI or virtio bus) beside bridges and loopback.
    host = _sys_net(tmp_path / "host", lo=False, docker0=False, enp3s0=True)
    assert config.host_network(host)
    assert not config.host_network(tmp_path / "no-sysfs")


def test_container_warnings(tmp_path: Path) -> None:
    inside = {config.CONTAINER_ENV: "1"}
    nat = _sys_net(tmp_path / "nat", lo=False, eth0=False)
    host = _sys_net(tmp_path / "host", lo=False, eth0=True)
    ftp = {"FTP_PASS": "camera-password", "HTTP_BIND": "0.0.0.0", "HTTP_TOKEN": "t" * 20}
    settings = config.load(env=ftp, config_file=Path("/dev/null"))
    assert [w.split(":")[0] for w in config.container_warnings(settings, inside, nat)] == [
        "FTP passive mode is on in a container and FTP_MASQUERADE_ADDRESS is not set"
    ]
    assert config.container_warnings(settings, {}, nat) == []
    assert config.container_warnings(settings, {config.CONTAINER_ENV: "0"}, nat) == []
    masqueraded = config.load(
        env={**ftp, "FTP_MASQUERADE_ADDRESS": MASQUERADE}, config_file=Path("/dev/null")
    )
    assert config.container_warnings(masqueraded, inside, nat) == []
    # FTP off: no passive mode to warn about; a loopback HTTP_BIND is its own warning.
    loopback = config.load(env={}, config_file=Path("/dev/null"))
    (warning,) = config.container_warnings(loopback, inside, nat)
    assert warning.startswith("HTTP_BIND is 127.0.0.1 in a container")
    # Under host networking there is no NAT: loopback is the host's, passive replies carry
    # the host's address.
    assert config.container_warnings(loopback, inside, host) == []
    assert config.container_warnings(settings, inside, host) == []


def test_check_config_under_host_networking_warns_of_nothing(tmp_path: Path) -> None:
    # This machine's own namespace, as `--network host` gives a container.
    if not config.host_network():
        pytest.skip("no network card in sight here")
    environment = {
        config.CONTAINER_ENV: "1",
        "FTP_PASS": "camera-password",
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "ftp"),
        "SECRETS_DIR": str(tmp_path),
    }
    done = _check_config_in_container(environment, tmp_path, nat=False)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stdout


def test_the_daemon_logs_the_warning_at_start(tmp_path: Path) -> None:
    # A data root under a file: the daemon ends at once (exit 3), after its warnings.
    blocker = tmp_path / "file"
    blocker.write_text("")
    environment = {
        config.CONTAINER_ENV: "1",
        "FTP_PASS": "camera-password",
        "HTTP_BIND": "0.0.0.0",
        "HTTP_TOKEN": "t" * 24,
        "SNAPSHOTS_ROOT_DIR": str(blocker / "data"),
        "SECRETS_DIR": str(tmp_path),
    }
    done = subprocess.run(
        _behind_nat([sys.executable, "-m", "snapshot_processor", "run"]),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT), **environment},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "WARNING" in output
    assert "FTP passive mode is on in a container and FTP_MASQUERADE_ADDRESS is not set" in output


def test_make_up_follows_setup_dir_and_setup_says_so(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    done = _make_setup(target)
    assert f"`make up SETUP_DIR={target}`" in done.stdout
    # make up looks in SETUP_DIR: with none there yet, it says which file it wants.
    empty = tmp_path / "empty"
    empty.mkdir()
    up = subprocess.run(
        ["make", "-s", "-C", str(CHECKOUT), "up", f"SETUP_DIR={empty}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode != 0
    assert f"no {empty}/docker-compose.yml: run make setup first" in up.stderr
