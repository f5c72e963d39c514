"""Settings: every problem named, secrets from env, /run/secrets-style files and 1Password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pylib.config.secrets import MissingSecretError, SecretResolver
from pylib.config.settings import ConfigError, setting_fields
from pylib.observe.redact import redact
from snapshot_processor import config
from snapshot_processor.contract.settings import cluster_warnings
from snapshot_processor.detection.settings import remote_detection_warnings
from tests.support.fakes.onepassword import FakeConnect, ItemSpec
from tests.support.paths import CHECKOUT
from tools import settings_doc

BAD_ENV = {
    "LOG_LEVEL": "LOUD",
    "SHUTDOWN_TIMEOUT": "soon",
    "METRICS_PORT": "99999",
    "RABBITMQ_URL": "http://guest:hunter22@rabbit/",
    "OUTPUT_1_TYPE": "camera",
    "OUTPUT_65_LOCATION": "attic",
    "OUTPUT_65_TYPE": "camera",
    "INPUT_2_LOCATION": "hall",
    "INPUT_2_TYPE": "pir",
    "INPUT_2_COLOUR": "red",
}


def test_every_problem_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env=BAD_ENV)
    text = "\n".join(caught.value.problems)
    for name in (
        "LOG_LEVEL",
        "SHUTDOWN_TIMEOUT",
        "METRICS_PORT",
        "RABBITMQ_URL",
        "OUTPUT_1_LOCATION",
        "OUTPUT_65_*",
        "INPUT_2_COLOUR",
    ):
        assert name in text, name
    assert "hunter22" not in text


def test_a_cluster_url_list_names_the_bad_node_by_place_not_by_its_text() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env={"RABBITMQ_URL": "amqp://u:n0de-Pw@a/, http://u:n0de-Pw@b/"})
    (problem,) = caught.value.problems
    assert "RABBITMQ_URL" in problem
    assert "URL 2 of 2" in problem
    assert "n0de-Pw" not in problem
    settings = config.load(env={"RABBITMQ_URL": "amqp://u:p@a/,amqps://u:p@b/"})
    assert settings.broker.url is not None
    # A / in a password, not percent-encoded: unreadable, and never quoted.
    with pytest.raises(ConfigError) as caught:
        config.load(env={"RABBITMQ_URL": "amqp://snap:Xy9/s3cret@host/"})
    (problem,) = caught.value.problems
    assert "percent-encode" in problem
    assert "Xy9" not in problem
    assert "s3cret" not in problem


def test_defaults_and_devices() -> None:
    settings = config.load(
        env={
            "DEVICE_NAME": "garage",
            "OUTPUT_1_LOCATION": "Front Door",
            "OUTPUT_1_TYPE": "Camera",
            "OUTPUT_2_LOCATION": "hall",
            "OUTPUT_2_TYPE": "siren",
            "INPUT_1_LOCATION": "Back Yard",
            "INPUT_1_TYPE": "camera",
        }
    )
    assert settings.broker.device_topic == "snapshot"
    assert settings.shutdown_timeout == 10.0
    assert [camera.key for camera in settings.cameras] == ["Front Door Camera"]
    assert [camera.key for camera in settings.upload_cameras] == ["Back Yard camera"]


def test_file_values_with_environment_overriding(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        'RABBITMQ_EXCHANGE = "from_file"\nDEVICE_NAME = "file"\nOUTPUT_1_LOCATION = "porch"\nOUTPUT_1_TYPE = "camera"\n'
    )
    settings = config.load(env={"DEVICE_NAME": "env"}, config_file=path)
    assert settings.broker.exchange == "from_file"
    assert settings.device_name == "env"
    assert settings.cameras[0].key == "porch camera"


def test_file_unknown_key_and_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('RABBITMQ_EXCHNAGE = "typo"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(env={}, config_file=path)
    assert caught.value.problems == ["RABBITMQ_EXCHNAGE: unknown setting"]
    path.write_text('DEVICE_NAME = "a"\nAPP_NAME = \n')
    with pytest.raises(ConfigError) as caught:
        config.load(env={}, config_file=path)
    assert "line 2" in caught.value.problems[0]


def test_secret_from_secrets_dir(tmp_path: Path) -> None:
    (tmp_path / "SENTRY_DSN").write_text("http://key@127.0.0.1:9/1\n")
    settings = config.load(env={"SECRETS_DIR": str(tmp_path)})
    assert settings.sentry_dsn is not None
    assert settings.sentry_dsn.get_secret_value() == "http://key@127.0.0.1:9/1"
    assert "key@" not in repr(settings)


def test_missing_required_secret_names_it(tmp_path: Path) -> None:
    resolver = SecretResolver({}, tmp_path)
    with pytest.raises(MissingSecretError) as caught:
        resolver.require("FTP_PASS")
    assert "FTP_PASS" in str(caught.value)
    assert str(tmp_path / "FTP_PASS") in str(caught.value)
    assert resolver.get("FTP_PASS") is None


def test_environment_wins_over_secrets_dir(tmp_path: Path) -> None:
    (tmp_path / "ftp_pass").write_text("from-file")
    assert SecretResolver({}, tmp_path).require("FTP_PASS") == "from-file"
    assert SecretResolver({"FTP_PASS": "from-env"}, tmp_path).require("FTP_PASS") == "from-env"


def _check_config(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapshot_processor", *args, "check-config"],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_command(tmp_path: Path) -> None:
    bad = _check_config(BAD_ENV, tmp_path)
    assert bad.returncode != 0
    assert "LOG_LEVEL" in bad.stderr
    assert "SHUTDOWN_TIMEOUT" in bad.stderr
    assert "OUTPUT_1_LOCATION" in bad.stderr
    assert "hunter22" not in bad.stderr + bad.stdout
    good = _check_config({"OUTPUT_1_LOCATION": "porch", "OUTPUT_1_TYPE": "camera"}, tmp_path)
    assert good.returncode == 0, good.stderr
    assert "1 camera output(s)" in good.stdout


def test_shipped_example_config_is_valid() -> None:
    example = CHECKOUT / "config" / "snapshot-processor.example.toml"
    settings = config.load(env={}, config_file=example)
    assert settings.app_name == "snapshot-processor"


def test_camera_password_from_one_password_and_missing_one_named(tmp_path: Path) -> None:
    token = "op-token-value-123"
    vaults: dict[str, dict[str, ItemSpec]] = {
        "Home": {"OUTPUT_1_PASSWORD": "cam-Pw@1:x", "SENTRY_DSN": "http://k@127.0.0.1:9/2"}
    }
    with FakeConnect(token, vaults) as connect:
        base = {
            "OP_CONNECT_HOST": connect.base_url,
            "OP_CONNECT_TOKEN": token,
            "OP_VAULT": "Home",
            "SECRETS_DIR": str(tmp_path),
            "OUTPUT_1_LOCATION": "porch",
            "OUTPUT_1_TYPE": "camera",
            "OUTPUT_1_ADDRESS": "10.0.0.5:88",
        }
        settings = config.load(env=base)
        password = settings.cameras[0].PASSWORD
        assert password is not None
        assert password.get_secret_value() == "cam-Pw@1:x"
        assert settings.sentry_dsn is not None
        assert settings.sentry_dsn.get_secret_value() == "http://k@127.0.0.1:9/2"
        with pytest.raises(ConfigError) as caught:
            config.load(
                env={
                    **base,
                    "OUTPUT_2_LOCATION": "yard",
                    "OUTPUT_2_TYPE": "camera",
                    "OUTPUT_2_ADDRESS": "10.0.0.6",
                }
            )
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("OUTPUT_2: ")
    assert "PASSWORD" in caught.value.problems[0]


def test_one_password_unreachable_is_a_named_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(
            env={
                "OP_CONNECT_HOST": "http://127.0.0.1:9",
                "OP_CONNECT_TOKEN": "op-token-value-123",
                "OP_VAULT": "Home",
                "SECRETS_DIR": str(tmp_path),
            }
        )
    (problem,) = caught.value.problems  # one line for the store, not one per secret
    assert problem.startswith("secret store: ")
    assert "127.0.0.1:9" in problem
    assert "op-token-value-123" not in str(caught.value)


def test_secrets_given_in_the_environment_are_redacted(tmp_path: Path) -> None:
    config.load(env={"FTP_PASS": "ftp-Secret-9", "SECRETS_DIR": str(tmp_path)})
    assert redact("login with ftp-Secret-9 failed") == "login with *** failed"


def test_model_problems_all_listed_without_echoing_secrets(tmp_path: Path) -> None:
    env = {
        "SECRETS_DIR": str(tmp_path),
        "FTP_ENABLED": "true",
        "FTP_PASS": "",  # empty is unset: never an empty password
        "FTP_TLS_CERT": str(tmp_path / "missing.crt"),
        "OP_CONNECT_HOST": "http://127.0.0.1:9",
        "HC_PING_URL": "https://hc-ping.com/secret-uuid-123",
        "RABBITMQ_URL": "amqp://u:rabbit-Pw-77@h/",
        "OBJECT_DETECTION_ENABLED": "true",
        "DEVICE_NAME": "garage.local",
        "OUTPUT_1_LOCATION": "yard",
        "OUTPUT_1_TYPE": "camera",
        "OUTPUT_1_VENDOR": "generic",
    }
    with pytest.raises(ConfigError) as caught:
        config.load(env=env)
    text = "\n".join(caught.value.problems)
    assert "DEVICE_NAME" in text
    assert "OUTPUT_1: Value error, a generic camera needs its snapshot URL" in text
    assert "secret-uuid-123" not in text
    assert "rabbit-Pw-77" not in text
    env.pop("DEVICE_NAME")
    env.pop("OUTPUT_1_VENDOR")
    with pytest.raises(ConfigError) as caught:
        config.load(env=env)
    text = "\n".join(caught.value.problems)
    for needle in (
        "OP_CONNECT_TOKEN",
        "FTP_PASS",
        "FTP_TLS_KEY",
        "missing.crt",
        "AWS_DEFAULT_REGION",
    ):
        assert needle in text, needle
    assert "secret-uuid-123" not in text
    assert "rabbit-Pw-77" not in text


def test_op_connect_token_from_secrets_dir(tmp_path: Path) -> None:
    token = "op-token-from-file"
    (tmp_path / "OP_CONNECT_TOKEN").write_text(token + "\n")
    with FakeConnect(token, {"Home": {"SENTRY_DSN": "http://k@127.0.0.1:9/3"}}) as connect:
        settings = config.load(
            env={
                "OP_CONNECT_HOST": connect.base_url,
                "OP_VAULT": "Home",
                "SECRETS_DIR": str(tmp_path),
            }
        )
    assert settings.sentry_dsn is not None
    assert settings.sentry_dsn.get_secret_value() == "http://k@127.0.0.1:9/3"


def _documented_names() -> list[str]:
    names = [name for name, _ in setting_fields(config.Settings)]
    names = [name for name in names if name not in ("INPUTS", "OUTPUTS")]
    return names + [f"OUTPUT_n_{key}" for key in config.Device.model_fields]


def test_the_configuration_page_and_example_list_every_setting() -> None:
    page = (CHECKOUT / "docs" / "configuration.md").read_text()
    example = (CHECKOUT / "config" / "snapshot-processor.example.toml").read_text()
    for name in _documented_names():
        assert f"| `{name}`" in page, f"docs/configuration.md lacks {name}"
        assert name.replace("OUTPUT_n_", "OUTPUT_1_") in example, f"example lacks {name}"


def test_the_configuration_page_is_what_make_docs_writes() -> None:
    assert settings_doc.PAGE.read_text(encoding="utf-8") == settings_doc.render(), (
        "docs/configuration.md is stale: run make docs"
    )
    # Every setting has words, and a default that matches the model's.
    rows = [line for line in settings_doc.PAGE.read_text().splitlines() if line.startswith("| `")]
    assert all(not line.endswith("| — |") for line in rows)
    assert "| `CAMERA_TIMEOUT` | 5.0 | number, > 0, ≤ 120 | seconds per request |" in rows
    assert any(line.startswith("| `OUTPUT_n_PASSWORD` *(secret)* | unset |") for line in rows)


def test_camera_keys_differing_only_in_case_are_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(
            env={
                "OUTPUT_1_LOCATION": "Garage",
                "OUTPUT_1_TYPE": "camera",
                "OUTPUT_2_LOCATION": "garage",
                "OUTPUT_2_TYPE": "Camera",
                "INPUT_1_LOCATION": "Yard",
                "INPUT_1_TYPE": "camera",
                "INPUT_2_LOCATION": "yard",
                "INPUT_2_TYPE": "camera",
            }
        )
    text = "\n".join(caught.value.problems)
    assert "OUTPUT_2 and OUTPUT_1" in text
    assert "INPUT_2 and INPUT_1" in text
    # Different places, and a camera input and output of one key, are fine.
    settings = config.load(
        env={
            "OUTPUT_1_LOCATION": "Garage",
            "OUTPUT_1_TYPE": "camera",
            "OUTPUT_2_LOCATION": "Garden",
            "OUTPUT_2_TYPE": "camera",
            "INPUT_1_LOCATION": "garage",
            "INPUT_1_TYPE": "camera",
        }
    )
    assert len(settings.cameras) == 2


def test_metrics_listen_on_loopback_unless_told() -> None:
    assert config.load(env={}).ops.metrics_address == "127.0.0.1"
    assert config.load(env={"METRICS_ADDRESS": "0.0.0.0"}).ops.metrics_address == "0.0.0.0"


def test_check_config_checks_the_data_root(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    top = str(CHECKOUT)
    bad = _check_config({"SNAPSHOTS_ROOT_DIR": str(blocker / "data"), "PYTHONPATH": top}, tmp_path)
    assert bad.returncode == 2
    assert f"SNAPSHOTS_ROOT_DIR: {blocker / 'data'} cannot be created" in bad.stderr
    good = _check_config(
        {"SNAPSHOTS_ROOT_DIR": str(tmp_path / "new" / "data"), "PYTHONPATH": top}, tmp_path
    )
    assert good.returncode == 0, good.stderr
    assert not (tmp_path / "new").exists()  # checked, not created


def test_unknown_variables_with_our_prefixes_are_named_with_the_nearest_setting() -> None:
    found = config.unknown_variables(
        {
            "FTP_PASSWORD": "x",
            "CAMERA_TIMOUT": "3",
            "OUTPUT_CAMERA": "porch",
            "SENTRY_DNS": "http://k@127.0.0.1:9/2",
            # Read by libraries or by other programs: not ours to judge.
            "AWS_CA_BUNDLE": "/etc/ca.pem",
            "HTTP_PROXY": "http://proxy:3128",
            "SNAPSHOT_PROCESSOR_CONFIG": "x.toml",
            "PATH": "/usr/bin",
            # Known names, numbered ones included.
            "FTP_PASS": "x",
            "OUTPUT_1_LOCATION": "porch",
        }
    )
    assert found == [
        "CAMERA_TIMOUT: unknown setting; did you mean CAMERA_TIMEOUT?",
        "FTP_PASSWORD: unknown setting; did you mean FTP_PASS?",
        "OUTPUT_CAMERA: unknown setting; numbered settings are OUTPUT_<n>_<KEY>",
        "SENTRY_DNS: unknown setting; did you mean SENTRY_DSN?",
    ]


def test_check_config_and_the_daemon_name_a_mistyped_variable(tmp_path: Path) -> None:
    env = {
        "CAMERA_TIMOUT": "3",
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(CHECKOUT),
    }
    checked = _check_config(env, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "warning: CAMERA_TIMOUT: unknown setting; did you mean CAMERA_TIMEOUT?" in checked.stdout
    # Beside a real problem, it is listed with the problems: it may be their cause.
    broken = _check_config({**env, "LOG_LEVEL": "LOUD"}, tmp_path)
    assert broken.returncode == 2
    assert "CAMERA_TIMOUT: unknown setting; did you mean CAMERA_TIMEOUT?" in broken.stderr
    # The daemon says the same at start.
    ran = subprocess.run(
        [sys.executable, "-m", "snapshot_processor", "run"],
        env={"PATH": "/usr/bin:/bin", **env, "LOG_LEVEL": "LOUD"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    assert "configuration: CAMERA_TIMOUT: unknown setting; did you mean CAMERA_TIMEOUT?" in (
        ran.stdout + ran.stderr
    )


def test_a_drive_credentials_file_of_the_wrong_kind_is_named(tmp_path: Path) -> None:
    client = tmp_path / "client_secret.json"
    client.write_text('{"installed": {"client_id": "x", "client_secret": "y"}}')
    odd = tmp_path / "odd.json"
    odd.write_text('{"type": "external_account"}')
    for path, said in (
        (
            client,
            "is an OAuth client-secrets file, not credentials: make credentials from it "
            "with snapshot-processor drive-auth --client-secrets FILE",
        ),
        (odd, "has type 'external_account'; expected authorized_user"),
    ):
        env = {"GOOGLE_DRIVE_FOLDER": "cams", "GOOGLE_DRIVE_CREDENTIALS": str(path)}
        with pytest.raises(ConfigError) as caught:
            config.load(env=env)
        assert any(f"GOOGLE_DRIVE_CREDENTIALS: {path} {said}" in p for p in caught.value.problems)


def test_the_ftp_masquerade_address_must_be_an_address() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env={"FTP_MASQUERADE_ADDRESS": "${FTP_MASQUERADE_ADDRESS:-}"})
    [problem] = caught.value.problems
    assert problem.startswith("FTP_MASQUERADE_ADDRESS: Value error, must be the IPv4 address")
    assert config.load(env={"FTP_MASQUERADE_ADDRESS": "192.168.1.10"}).ingest


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"VENDOR": "rtsp"}, "an rtsp camera needs its stream URL"),
        ({"VENDOR": "rtsp", "URL": "http://cam/x.jpg"}, "an rtsp camera needs its stream URL"),
        (
            {"VENDOR": "rtsp", "URL": "rtsp://cam/live", "RTSP_MODE": "off"},
            "an rtsp camera takes its stills from its stream",
        ),
        (
            {"VENDOR": "rtsp", "URL": "rtsp://cam/live", "ADDRESS": "cam"},
            "an rtsp camera's address is in its URL",
        ),
        (
            {"VENDOR": "generic", "URL": "rtsp://cam/live"},
            "a generic camera needs its snapshot URL",
        ),
        ({"VENDOR": "hikvision", "URL": "rtsp://cam/live"}, "URL is for generic and rtsp cameras"),
        (
            {"VENDOR": "rtsp", "URL": "rtsp://cam/live", "PRE_TRIGGER_SECONDS": "5"},
            "PRE_TRIGGER_SECONDS needs RTSP_MODE=warm",
        ),
        ({"VENDOR": "reolink", "RTSP_MODE": "always"}, "OUTPUT_1_RTSP_MODE"),
        ({"VENDOR": "rtsp", "URL": "rtsp:///live"}, "an rtsp camera's URL names no host"),
        (
            {"VENDOR": "generic", "URL": "http://cam/s.jpg", "RTSP_MODE": "warm", "AUTH": "none"},
            "RTSP_MODE is for rtsp, onvif and the known vendors' cameras",
        ),
        ({"VENDOR": "rtsp", "URL": "rtsp://cam/live", "RTSP_TRANSPORT": "http"}, "RTSP_TRANSPORT"),
    ],
)
def test_a_stream_cameras_mistakes_are_caught_at_start(
    tmp_path: Path, settings: dict[str, str], problem: str
) -> None:
    env = {
        "SECRETS_DIR": str(tmp_path),
        "OUTPUT_1_LOCATION": "Doorbell",
        "OUTPUT_1_TYPE": "camera",
        **{f"OUTPUT_1_{name}": value for name, value in settings.items()},
    }
    with pytest.raises(ConfigError) as caught:
        config.load(env=env)
    assert problem in "\n".join(caught.value.problems)


def test_a_warm_stream_camera_with_seconds_before_its_triggers_is_valid(tmp_path: Path) -> None:
    settings = config.load(
        env={
            "SECRETS_DIR": str(tmp_path),
            "OUTPUT_1_LOCATION": "Doorbell",
            "OUTPUT_1_TYPE": "camera",
            "OUTPUT_1_VENDOR": "rtsp",
            "OUTPUT_1_URL": "rtsp://admin:pw@192.0.2.9/live",
            "OUTPUT_1_RTSP_MODE": "warm",
            "OUTPUT_1_PRE_TRIGGER_SECONDS": "4",
        }
    )
    [camera] = settings.cameras
    assert (camera.rtsp_mode, camera.PRE_TRIGGER_SECONDS, camera.RTSP_TRANSPORT) == (
        "warm",
        4.0,
        "tcp",
    )
    assert (
        config.Device.model_validate(
            {"LOCATION": "Gate", "TYPE": "camera", "VENDOR": "dahua"}
        ).rtsp_mode
        == "off"
    )


def test_a_cluster_with_a_classic_trigger_queue_is_warned_of() -> None:
    nodes = "amqp://u:p@a/,amqp://u:p@b/"
    (warning,) = cluster_warnings(config.load(env={"RABBITMQ_URL": nodes}).broker)
    assert "2 nodes" in warning
    assert "RABBITMQ_QUEUE_TYPE=quorum" in warning
    quorum = config.load(env={"RABBITMQ_URL": nodes, "RABBITMQ_QUEUE_TYPE": "quorum"})
    assert cluster_warnings(quorum.broker) == []
    assert cluster_warnings(config.load(env={"RABBITMQ_URL": "amqp://u:p@a/"}).broker) == []
    assert cluster_warnings(config.load(env={}).broker) == []


def test_remote_detection_without_detection_is_warned_of() -> None:
    idle = config.load(env={"DETECTION_REMOTE": "true"}).detection
    (warning,) = remote_detection_warnings(idle)
    assert "OBJECT_DETECTION_ENABLED" in warning
    on = config.load(env={"DETECTION_REMOTE": "true", "OBJECT_DETECTION_ENABLED": "true"})
    # Remote: the daemon needs no backend settings of its own (Rekognition's region).
    assert on.detection.backend == "rekognition"
    assert remote_detection_warnings(on.detection) == []
