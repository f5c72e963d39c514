"""``simulate-cameras``: the camera simulator, a development tool that stays in ``tools/``
(the package and the image carry none of it), so it is imported only when run."""

from __future__ import annotations

import argparse
import importlib

from snapshot_processor.cli.common import EXIT_START, CommandError

HELP = "run the camera simulator (a development tool; its own --help lists its options)"


def run(args: argparse.Namespace) -> int:
    try:
        simulator = importlib.import_module("tools.camera_simulator")
    except ImportError:
        raise CommandError(
            "the camera simulator (tools/camera_simulator.py) is a development tool, not "
            "installed with the package: run this from a source checkout",
            EXIT_START,
        ) from None
    parser = argparse.ArgumentParser(
        prog="snapshot-processor simulate-cameras", description=simulator.DESCRIPTION
    )
    simulator.add_arguments(parser)
    code: int = simulator.serve(parser.parse_args(args.rest))
    return code
