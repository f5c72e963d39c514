"""Operations: the HTTP routes, the status page, and the record of recent events."""
