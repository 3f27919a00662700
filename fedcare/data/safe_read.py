"""Read a data file the careful way: a regular file, inside its folder, size-capped while read.

A hospital's data path comes from a person or a config file, so it may name anything: a
named pipe (reading blocks for ever), a device such as ``/dev/zero`` (endless), a
directory, or a symbolic link to a file elsewhere on the machine (whose first line would
then be echoed in an error message). :func:`read_regular_file` opens without blocking,
checks what it opened with ``fstat`` (not the path, which could be swapped), refuses
anything but a regular file, refuses a link that leads out of the file's folder unless
``allow_symlinks`` is set, and stops reading at ``max_bytes + 1`` bytes whatever ``stat``
said beforehand. It never returns or quotes the file's content in an error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fedcare.common.errors import FedcareError

READ_CHUNK = 4 * 2**20
"""Bytes per read call (the cap is checked after each one)."""


class UnreadableFile(FedcareError, ValueError):
    """A data path is not a readable regular file inside its folder, or is too large.

    ``rule`` is the sentence tail (``must be ...; got ...``) without the path, so callers
    can put the path where their own error grammar wants it.
    """

    def __init__(self, path: str, rule: str) -> None:
        self.path = path
        self.rule = rule
        super().__init__(f"{path}: {rule}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_inside_folder(path: str | os.PathLike[str], *, allow_symlinks: bool) -> None:
    """``UnreadableFile`` when ``path`` is a link whose target lies outside the folder the
    path names (``allow_symlinks`` lifts the rule)."""
    source = os.fspath(path)
    if allow_symlinks:
        return
    given = Path(os.path.abspath(source))
    folder = given.parent.resolve()
    try:
        target = given.resolve(strict=True)
    except FileNotFoundError:
        return  # the open below names the missing file
    except (OSError, RuntimeError):  # a link loop
        raise UnreadableFile(source, "path must lead to a file; got a symbolic-link loop") \
            from None
    if folder not in target.parents:
        raise UnreadableFile(
            source, "path must be a file inside its own folder; got a symbolic link to a "
                    "file elsewhere (pass --allow-symlinks to read it anyway)")


def read_regular_file(path: str | os.PathLike[str], *, max_bytes: int,
                      allow_symlinks: bool = False) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes (``UnreadableFile`` if not)."""
    source = os.fspath(path)
    check_inside_folder(source, allow_symlinks=allow_symlinks)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; the fstat below refuses it.
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UnreadableFile(source, "file must exist; got no file at this path") from None
    except PermissionError:
        raise UnreadableFile(source, "file must be readable; got permission denied") from None
    except OSError as exc:  # e.g. ENXIO for a socket, ELOOP
        raise UnreadableFile(source, f"file must be a readable regular file; got "
                                     f"{exc.strerror or type(exc).__name__}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(source, f"path must be a file; got {_kind(info.st_mode)}")
        raise UnreadableFile(source, f"file must be at most {max_bytes} bytes; got "
                                     f"{info.st_size} bytes")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        chunks: list[bytes] = []
        total = 0
        while True:  # the cap holds while reading, whatever the size said (a growing file)
            chunk = handle.read(min(READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UnreadableFile(source, f"file must be at most {max_bytes} bytes; got "
                                             f"more (reading stopped at {total} bytes)")
    return b"".join(chunks)


SECRET_MAX_BYTES = 4096
"""A token file is a line of text; anything larger is the wrong file."""


def read_secret_file(path: str | os.PathLike[str], *, what: str = "token file") -> str:
    """A secret's text (stripped): a regular file, readable by its owner only, non-empty.

    ``UnreadableFile`` otherwise: a secret others can read is not one (``chmod 600``).
    """
    source = os.fspath(path)
    raw = read_regular_file(source, max_bytes=SECRET_MAX_BYTES, allow_symlinks=True)
    mode = stat.S_IMODE(os.stat(source).st_mode)
    if mode & 0o077:
        raise UnreadableFile(source, f"{what} must be readable by its owner only (chmod 600); "
                                     f"got mode {mode:04o}")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UnreadableFile(source, f"{what} must be UTF-8 text; got other bytes") from None
    if not text:
        raise UnreadableFile(source, f"{what} must hold the secret; got an empty file")
    return text
