"""`taskring bench`: a load generator that drives a running system through its real portals.

The pure parts (what to do next, when to do it, how to summarise latencies)
are workload.py, schedule.py, histogram.py and results.py; driver.py runs
them over asyncio connections that the targets in targets/ open: taskring's
own portals, and for comparison a Redis and an etcd cluster started here.
"""
