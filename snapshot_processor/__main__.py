"""``python -m snapshot_processor``."""

import sys

from snapshot_processor.cli import main

sys.exit(main())
