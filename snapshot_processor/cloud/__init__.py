"""Cloud destinations for snapshots: Google Drive (pydrive2) and its year/month/day archive."""
