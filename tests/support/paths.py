"""Where the checkout is, for tests that read or run its files."""

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent.parent
