"""Ingest: images cameras push to the daemon (FTP server, watched folder), sent down the chain."""
