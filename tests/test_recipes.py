"""The trigger recipes of docs/triggers.md, run as written against a running daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.ops.test_routes import TOKEN
from tests.support.broker import running_app, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.net import free_port
from tests.support.paths import CHECKOUT
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

DOC = (CHECKOUT / "docs" / "triggers.md").read_text(encoding="utf-8")
DOCUMENTED = "127.0.0.1:8080"


def block_after(heading: str, number: int = 0) -> str:
    """The ``number``-th fenced block after a ``### heading`` of the page."""
    section = DOC.split(f"### {heading}\n", 1)[1]
    blocks: list[str] = re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
    return blocks[number]


class _SecretLoader(yaml.SafeLoader):  # type: ignore[misc]
    """Home Assistant's YAML: ``!secret name`` stands for a value from secrets.yaml."""


_SecretLoader.add_constructor("!secret", lambda loader, node: ("secret", node.value))


def test_the_curl_cron_and_home_assistant_recipes_take_a_snapshot(tmp_path: Path) -> None:
    port = free_port()
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            unique_exchange(),
            **camera_env(camera.port, PASSWORD, location="Front Door"),
            HTTP_PORT=str(port),
            HTTP_TOKEN=TOKEN,
        )
        home = tmp_path / "home"
        home.mkdir()
        (home / ".snapshot-token").write_text(TOKEN)
        here = f"127.0.0.1:{port}"
        with running_app(settings):
            # curl, as written, with the token in the environment.
            curl = block_after("curl").strip().replace(DOCUMENTED, here)
            done = subprocess.run(
                ["bash", "-c", curl], env={"PATH": "/usr/bin:/bin", "HTTP_TOKEN": TOKEN}
            )
            assert done.returncode == 0
            wait_until(lambda: camera.served >= 1, 15)

            # cron: the command after the five time fields, with cron's `\%` turned back.
            line = block_after("cron").strip()
            assert re.match(r"^\*/15 \* \* \* \* ", line)
            command = line.split(" ", 5)[5].replace("\\%", "%").replace(DOCUMENTED, here)
            done = subprocess.run(
                ["bash", "-c", command], env={"PATH": "/usr/bin:/bin", "HOME": str(home)}
            )
            assert done.returncode == 0
            wait_until(lambda: camera.served >= 2, 15)

            # Home Assistant's rest_command, as its YAML says, with secrets.yaml's value.
            config: dict[str, Any] = yaml.load(block_after("Home Assistant"), _SecretLoader)
            secrets = yaml.safe_load(block_after("Home Assistant", 1))
            command_spec = config["rest_command"]["snapshot_front_door"]
            kind, name = command_spec["headers"]["authorization"]
            assert kind == "secret"
            header = secrets[name].replace("paste-the-HTTP_TOKEN-here", TOKEN)
            url = re.sub(r"//[^/]+/", f"//{here}/", command_spec["url"])
            answer = requests.request(
                command_spec["method"].upper(),
                url,
                headers={"authorization": header},
                timeout=command_spec["timeout"],
            )
            assert answer.status_code == 202, answer.text
            wait_until(lambda: camera.served >= 3, 15)
            automation = yaml.safe_load(block_after("Home Assistant", 2))["automation"][0]
            assert automation["actions"][0]["action"] == "rest_command.snapshot_front_door"
