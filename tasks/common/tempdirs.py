"""Temp folders a run makes outside the lake (the chart browser's profile and page), named so that
a later check can tell ours from anyone else's and find the process that owns each one.

A folder is `<system temp dir>/faker-<kind>-<pid>-<random>`: a process killed by SIGKILL runs no
clean-up, so its folders stay until `--check` or the next run's start removes them
(`tasks.storage.recovery.remove_dead_temp_dirs`), once their owner is gone.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

PREFIX = "faker-"
# The kinds of folder we make; a name with any other kind is not ours.
KINDS = ("charts",)
# mkdtemp's random part is drawn from lower-case letters, digits and "_".
_NAME = re.compile(rf"^{PREFIX}(?P<kind>{'|'.join(KINDS)})-(?P<pid>[1-9][0-9]*)-[a-z0-9_]+$")


def make_temp_dir(kind: str) -> Path:
    """A new folder of `kind` in the system temp dir, owned by this process (mode 0700)."""
    if kind not in KINDS:
        raise ValueError(f"unknown temp folder kind {kind!r}; known: {', '.join(KINDS)}")
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-"))


def owned_temp_dirs(root: Path | None = None) -> list[tuple[Path, int]]:
    """(folder, owner pid) of every folder of ours in `root` (default: the system temp dir).

    Ours: named by `make_temp_dir`, a real directory (not a link to one) and owned by this
    user, so nothing someone else made under a look-alike name is ever listed.
    """
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    found = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for path in entries:
        match = _NAME.match(path.name)
        if match is None:
            continue
        try:
            info = path.lstat()
        except OSError:
            continue  # removed meanwhile
        if path.is_symlink() or not path.is_dir() or info.st_uid != os.getuid():
            continue
        found.append((path, int(match["pid"])))
    return found
