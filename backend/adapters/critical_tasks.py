"""Tasks that must live as long as their process.

A process whose bus loop, ticker or heartbeat has died is alive but useless,
and its supervisor (`taskring up`) cannot tell. `critical_task` runs such a
loop; should it ever end other than by being cancelled (an exception, or a
plain return), it logs that as critical and exits the whole process with
EXIT_LOOP_DIED, so the supervisor restarts it. Cancelling it is how its owner
stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

EXIT_LOOP_DIED = 70  # EX_SOFTWARE: an internal error, worth a restart


def critical_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Run `coro`, a loop that must live as long as the process; cancel it to stop it.
    Ending any other way exits the process."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_exit_unless_cancelled)
    return task


def _exit_unless_cancelled(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return  # stopped on purpose
    exc = task.exception()
    if exc is None:
        log.critical("%s returned, and must run until the process stops; exiting", task.get_name())
    else:
        log.critical(
            "%s died, and must run until the process stops; exiting",
            task.get_name(),
            exc_info=exc,
        )
    die(EXIT_LOOP_DIED)


def die(code: int) -> None:
    """Exit now, from inside the event loop, whatever else is running: the loop that
    died leaves the process unable to shut down in order."""
    logging.shutdown()  # flushes every handler
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
