"""Bundles: the snapshots of one sensor event, from every camera it triggered."""
