"""Running a daemon: supervised workers, start-up and shutdown, the data root, health pings."""
