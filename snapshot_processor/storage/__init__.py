"""Storage: snapshot files on the local disk, their retention, and the upload of each one to
the cloud destinations (Google Drive, S3)."""
