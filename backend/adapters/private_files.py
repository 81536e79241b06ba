"""Files only their owner may read: logs, write-ahead logs, snapshots, their directories.

Task titles, descriptions and token verifiers end up in these files, so they are
created 0600 in 0700 directories whatever the umask (every taskring process also
sets umask 0o077 at start, backend/cli/main.py). A directory that already exists with
group or other permission bits (made by an older version, or by hand) is tightened
to 0700, with one log line saying so.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
PRIVATE_UMASK = 0o077


def private_directory(path: Path | str) -> Path:
    """Create `path` and any missing parents as 0700; tighten `path` itself if it is open
    to group or others (parents that already existed are not ours to change)."""
    path = Path(path)
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process; tightened below if it is `path`
        os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode is masked by the umask
    tighten(path)
    return path


def tighten(path: Path) -> None:
    """Make an existing directory 0700 if group or others could use it."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        os.chmod(path, DIRECTORY_MODE)
        log.warning("%s was readable by others (mode %o); made it 0700", path, mode)


def create_private(path: Path | str, flags: int) -> int:
    """os.open with O_CREAT and mode 0600, and 0600 even if the file already existed."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # O_CREAT keeps an existing file's mode; the umask masks a new one
    return fd


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file, then a rename), 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(create_private(temporary, os.O_WRONLY | os.O_TRUNC), "w") as file:
        file.write(text)
    os.replace(temporary, path)
