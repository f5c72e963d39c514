"""Observing the daemon: logs with secrets redacted, Sentry, and the log of a repeating trouble."""
