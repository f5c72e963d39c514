"""Ingest: images that cameras push to the daemon (its FTP server and the watched upload
folder), checked and sent down the chain."""
