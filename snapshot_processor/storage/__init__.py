"""Storage: snapshot files on the local disk, their retention, and uploads to Drive and S3."""
