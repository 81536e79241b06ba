"""Deterministic simulators that drive the pure cores over a seeded in-memory network."""
