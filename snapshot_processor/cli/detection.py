"""``detection evaluate [--config OTHER] [--cloud]``: the configured detection (and another
configuration) measured on the labelled set: precision and recall for a person, the cloud
calls it would make and their price, and the difference; each result kept for check-config."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from pylib.config.settings import ConfigError
from pylib.observe.logs import printable
from snapshot_processor import config
from snapshot_processor.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_START,
    CommandError,
    command_logging,
    load_settings,
)
from snapshot_processor.config import Settings
from snapshot_processor.detection import evaluate as evaluation
from snapshot_processor.detection.base import DetectionError
from snapshot_processor.detection.budget import BudgetError
from snapshot_processor.detection.evaluate import Evaluation, EvaluationError
from snapshot_processor.detection.labelled import (
    Labelled,
    LabelledSetError,
    count_entries,
    folder,
    read_entries,
)

HELP = "measure detection on the labelled set: precision, recall and cloud calls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``detection evaluate [--config OTHER] [--cloud]``."""
    actions = parser.add_subparsers(dest="action", metavar="{evaluate}", required=True)
    evaluate = actions.add_parser(
        "evaluate",
        help="replay the labelled set through the configured detection (and another "
        "configuration): precision and recall for a person, cloud calls and their price",
        description="Replay the labelled set (the images given a person / not a person "
        "verdict) through the configured detection and print precision and recall for a "
        "person, the cloud calls it would make and their price; with --config, the same for "
        "another settings file and the difference. The cloud is never asked without --cloud.",
    )
    evaluate.add_argument(
        "--config",
        dest="other",
        type=Path,
        default=None,
        metavar="OTHER",
        help="another settings file to measure beside the configured one (its detection "
        "settings; the labelled set is the configured data root's)",
    )
    evaluate.add_argument(
        "--cloud",
        action="store_true",
        help="ask the cloud backend for the frames a chain would send it that have no "
        "recorded answer (costs DETECTION_PRICE_PER_IMAGE each, counted in the daemon's "
        "daily budget and within DETECTION_DAILY_BUDGET); without it they are undecided",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    other = _other_settings(args.other) if args.other is not None else None
    root = settings.snapshots_root_dir
    try:
        entries = read_entries(root)
    except LabelledSetError as exc:
        raise CommandError(str(exc), EXIT_START) from None
    where = printable(folder(root))
    if not entries:
        print(
            f"labelled set {where}: no image yet; give verdicts on events first (the status "
            "page's person / not a person buttons, the bus, Home Assistant)"
        )
        return 0
    persons = sum(1 for entry in entries if entry.person)
    print(
        f"labelled set {where}: {len(entries)} image(s), {persons} with a person, "
        f"{len(entries) - persons} without"
    )
    running = _measured(settings, entries, args.cloud, "running", settings.snapshots_root_dir)
    _show("running configuration", running, settings)
    results = [running]
    if other is not None:
        measured = _measured(
            other, entries, args.cloud, str(args.other), settings.snapshots_root_dir
        )
        _show(f"other configuration ({printable(args.other)})", measured, other)
        for line in difference(running, measured):
            print(line)
        results.append(measured)
    try:
        evaluation.store(root, *results)
    except EvaluationError as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    print(f"kept in {printable(evaluation.evaluations_path(root))} for check-config")
    return 0


def _other_settings(path: Path) -> Settings:
    try:
        return config.load(config_file=path)
    except ConfigError as exc:
        more = len(exc.problems) - 1
        extra = f" (and {more} more: see check-config)" if more > 0 else ""
        raise CommandError(
            f"--config {printable(path)}: {exc.problems[0]}{extra}", EXIT_CONFIG
        ) from None


def _measured(
    settings: Settings, entries: list[Labelled], cloud: bool, name: str, root: Path
) -> Evaluation:
    """``settings`` measured; the cloud, if asked, spends from the budget kept in ``root``
    (the running configuration's data root, whichever configuration is measured)."""
    section = settings.detection
    try:
        with command_logging():
            return evaluation.evaluate(section, entries, ask_cloud=cloud, data_root=root, name=name)
    except (OSError, ValueError, ImportError, DetectionError, BudgetError) as exc:
        backend = evaluation.as_running(section).backend
        raise CommandError(f"detection ({backend}) cannot start: {exc}", EXIT_START) from None


def _share(value: float | None, empty: str) -> str:
    return f"{value:.3f}" if value is not None else f"n/a ({empty})"


def _show(title: str, result: Evaluation, settings: Settings) -> None:
    section = settings.detection
    off = "" if section.enabled else " (detection is off here: measured as if it were on)"
    print(f"{title}: {result.backend}, fingerprint {result.fingerprint}{off}")
    said = result.true_positives + result.false_positives
    persons = result.true_positives + result.false_negatives
    print(
        f"  precision (person): {_share(result.precision, 'no image said to show a person')}"
        + (f" ({result.true_positives} of {said} said to show a person)" if said else "")
    )
    print(
        f"  recall (person): {_share(result.recall, 'no decided image shows a person')}"
        + (f" ({result.true_positives} of {persons} with a person found)" if persons else "")
    )
    per_image = result.cloud_per_image or 0.0
    cloud = (
        f"  cloud calls: {result.cloud_calls} for {result.images} image(s) "
        f"({per_image:.3f} per image), {result.cloud_cost:.4f} at "
        f"{result.price_per_image:g} an image"
    )
    if result.cloud_calls:
        cloud += (
            f"; {result.cloud_recorded} answered as recorded with the image, "
            f"{result.cloud_asked} asked now"
        )
    print(cloud)
    undecided = f"  undecided: {result.undecided}"
    if result.undecided:
        undecided += (
            " (frames the cloud would answer, with no answer recorded with the image: not "
            "counted above; --cloud asks the cloud for them)"
        )
    print(undecided)
    if result.failed:
        print(f"  failed: {result.failed} (image unreadable or the model failed; see above)")


def _delta(mine: float | None, other: float | None, digits: int) -> str:
    if mine is None or other is None:
        return "n/a"
    return f"{other - mine:+.{digits}f}"


def difference(running: Evaluation, other: Evaluation) -> list[str]:
    """The lines of ``other`` minus ``running``, figure by figure."""
    calls = other.cloud_calls - running.cloud_calls
    return [
        "difference (other minus running):",
        f"  precision (person): {_delta(running.precision, other.precision, 3)}",
        f"  recall (person): {_delta(running.recall, other.recall, 3)}",
        f"  cloud calls: {calls:+d} "
        f"({_delta(running.cloud_per_image, other.cloud_per_image, 3)} per image), "
        f"{_delta(running.cloud_cost, other.cloud_cost, 4)} in price",
        f"  undecided: {other.undecided - running.undecided:+d}",
    ]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def _figures(result: Evaluation) -> str:
    return (
        f"precision {_share(result.precision, 'none said')}, recall "
        f"{_share(result.recall, 'no person')} on {result.images} labelled image(s), "
        f"evaluated {_when(result.at)}"
    )


def config_notes(settings: Settings, say: Callable[[str], None] = print) -> None:
    """check-config's lines on detection against the labelled set, from the kept
    evaluations only (nothing is replayed): a warning when this configuration did worse
    than the last other one evaluated, a hint when it was never evaluated."""
    section = settings.detection
    if not section.enabled:
        return
    root = settings.snapshots_root_dir
    try:
        count = count_entries(root)
        if not count:
            return
        kept = evaluation.stored(root)
    except (LabelledSetError, EvaluationError) as exc:
        say(f"warning: detection: {exc}")
        return
    mine, other = evaluation.compared(kept, evaluation.fingerprint(section))
    if mine is None:
        say(
            f"hint: this detection configuration ({section.backend}) was never evaluated on "
            f"the {count} labelled image(s); 'snapshot-processor detection evaluate' measures it"
        )
        return
    if other is not None and evaluation.worse(mine, other):
        say(
            f"warning: detection: this configuration ({mine.backend}: {_figures(mine)}) is "
            f"worse on the labelled set than the last other one evaluated ({other.backend}: "
            f"{_figures(other)})"
        )
