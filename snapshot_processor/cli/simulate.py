"""``simulate-cameras``: the camera simulator (``tools/camera_simulator.py``).

The simulator stays in ``tools/``: it is a development tool (tests, the demo, the
benchmark), so the package and the container image carry none of it. This command
imports it only when run, and says so in one line where ``tools/`` is not installed.
"""

from __future__ import annotations

import argparse
import importlib

from snapshot_processor.cli.common import EXIT_START, CommandError

HELP = "run the camera simulator (a development tool; its own --help lists its options)"


def run(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to the simulator's own parser and serve."""
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
