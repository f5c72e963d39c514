"""The chain between the daemon's threads: sockets, the one stage shape, acks, wiring."""
