"""Google Drive as an upload destination: a session for any API root, folders made once,
errors sorted, the consent command and the year/month/day archive."""
