"""Google Drive as an upload destination, its consent command and its date archive."""
