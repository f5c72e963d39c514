"""``detect-worker``: answer the daemons' detection work (``DETECTION_REMOTE``) with this
machine's backend, until SIGTERM or SIGINT. Its settings are the daemon's keys: the broker
(``RABBITMQ_*``, the same exchange and topic) and detection (``OBJECT_DETECTION_*``,
``DETECTION_*``); a chain's daily budget is kept in this machine's data root."""

from __future__ import annotations

import argparse
import logging

from pylib.config.settings import ConfigError
from pylib.observe.logs import setup_logging
from pylib.runtime import dataroot
from pylib.runtime.daemon import Daemon
from snapshot_processor import config
from snapshot_processor.cli.common import EXIT_CONFIG, EXIT_START
from snapshot_processor.contract.feature import params
from snapshot_processor.detection.base import DetectionError
from snapshot_processor.detection.budget import BudgetError
from snapshot_processor.detection.registry import make_detector
from snapshot_processor.detection.serve import DetectionService
from snapshot_processor.detection.work import work_queue
from snapshot_processor.ops import feature as ops

log = logging.getLogger("snapshot_processor")

HELP = "take detection work from the daemons (DETECTION_REMOTE) and answer it with this machine's backend"


def run(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        settings = config.load(config_file=args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("configuration: %s", problem)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.syslog_address)
    detection = settings.detection
    if detection.backend == "none":
        log.error(
            "configuration: a detect-worker needs OBJECT_DETECTION_ENABLED=true and its "
            "OBJECT_DETECTION_BACKEND"
        )
        return EXIT_CONFIG
    try:
        warning = dataroot.prepare(settings.snapshots_root_dir)
        if warning:
            log.warning("%s", warning)
        detector = make_detector(detection, settings.snapshots_root_dir)
    except (
        dataroot.DataRootError,
        OSError,
        ValueError,
        ImportError,
        DetectionError,
        BudgetError,
    ) as exc:
        log.error("cannot start: detection (%s): %s", detection.backend, exc)
        return EXIT_START
    daemon = Daemon(f"{settings.app_name} detect-worker", settings.shutdown_timeout)
    ops.metrics_listener(settings, daemon)

    def close(timeout: float) -> bool:
        detector.close()
        return True

    daemon.add_step("detector", lambda: None, close)
    daemon.add(
        DetectionService(
            daemon.stop_event,
            params=params(settings, "detect-worker"),
            queue=work_queue(settings.broker.exchange, settings.broker.device_topic),
            detector=detector,
            retry=settings.broker.RECONNECT,
            on_fatal=daemon.on_fatal,
        )
    )
    daemon.install_signal_handlers()
    return daemon.run()
