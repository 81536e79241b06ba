"""I/O adapters: the bus, the disk, files, child processes, heartbeats, settings."""
