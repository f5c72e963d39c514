"""Cloud destinations for snapshots (Google Drive, S3), each behind pylib.destination."""
