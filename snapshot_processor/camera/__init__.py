"""Cameras: vendors' clients, their registry, the snapshot stage, per-camera queues, the prober."""
