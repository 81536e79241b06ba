"""A process the tests started, with the log file its output goes to."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


class LoggedProcess(subprocess.Popen[bytes]):
    """subprocess.Popen that remembers where its stdout and stderr are written."""

    def __init__(self, args: list[str], log_path: Path, **options: Any) -> None:
        super().__init__(args, **options)
        self.log_path = log_path
