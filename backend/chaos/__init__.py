"""`taskring chaos`: faults injected into a running system under a recorded workload.

The recorder (recorder.py) drives clients through the client portals and records
every call; the nemesis (schedule.py, a pure seeded plan; injectors.py, the faults
on real processes) strikes meanwhile; the verdict (verdict.py) checks the history
and the report (report.py) draws it. docs/operating.md, "Chaos", tells the whole.
"""
