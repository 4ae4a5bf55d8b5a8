"""Write a directory atomically: fill a temporary sibling, then rename it into place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, what: str = "Directory"
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    Readers never see a half-written directory: on any error (also ``Ctrl-C``)
    the temporary directory is removed and ``path`` is left as it was.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is ``False``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_directory(root / "bundle") as folder:
    ...     _ = (folder / "config.json").write_text("{}")
    >>> sorted(p.name for p in (root / "bundle").iterdir())
    ['config.json']
    """
    target = Path(path)
    if target.exists() and not overwrite:
        msg = f"{what} {str(target)!r} already exists. Pass overwrite=True or choose another path."
        raise FileExistsError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        yield temporary
        if target.exists():
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(trash)
            temporary.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            temporary.rename(target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
