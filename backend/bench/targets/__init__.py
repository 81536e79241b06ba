"""The systems the bench can drive: taskring through its portals, and Redis and etcd to compare."""
