"""The run folder (``--out``) of a training: held by one training at a time, and never taken over
from a previous run unless asked to (``--resume`` continues that run, ``--overwrite`` replaces it).

The hold is an ``fcntl.flock`` on ``DIR/.lock``, kept for the life of the run. The operating
system drops it when the process ends, however it ends (a ``kill -9`` included), so a crash leaves
no stale lock; the file itself is removed on a normal exit. Under ``torchrun`` rank 0 alone takes
the lock and checks the folder, and its verdict is broadcast, so every rank fails or goes on with it.
"""
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
# The files that make a folder a run's: what --overwrite removes.
RUN_FILES = (CHECKPOINT, METRICS)


class RunFolderError(ValueError):
    """A run folder that is in use by another training, or holds a run it was not asked to continue or replace."""


class RunFolderLock:
    """An exclusive ``flock`` on ``folder/.lock``, taken without waiting; see the module."""

    def __init__(self, folder):
        self.path = Path(folder) / LOCK
        self.descriptor = None

    def acquire(self):
        """Take the lock (writing this process's id into the file) or raise RunFolderError at once."""
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._lock(descriptor):
                    os.ftruncate(descriptor, 0)
                    os.write(descriptor, f"{os.getpid()}\n".encode())
                    self.descriptor = descriptor
                    return self
            except BaseException:
                os.close(descriptor)
                raise
            os.close(descriptor)

    def _lock(self, descriptor):
        """Lock the open file; False if it is no longer the file at the path (then try again)."""
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(descriptor)
            raise RunFolderError(f"--out {str(self.path.parent)!r} is in use: another training"
                                 f"{f' (pid {holder})' if holder else ''} holds its lock {str(self.path)!r}; "
                                 "wait for it to end or choose another --out") from None
        # A holder that was ending may have removed the file between our open and our lock: the
        # lock would then guard a file nobody else opens.
        return _same_file(descriptor, self.path)

    def release(self):
        if self.descriptor is None:
            return
        # Removed while still held: whoever opened the file meanwhile sees, once it has the lock,
        # that the file is gone from the path, and tries again (see _lock).
        self.path.unlink(missing_ok=True)
        os.close(self.descriptor)
        self.descriptor = None


def previous_run_files(folder):
    """The names of a previous run's files in ``folder`` (none if it does not exist)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_vacant(folder, resume, overwrite):
    """Refuse a folder that holds a previous run unless ``resume`` or ``overwrite`` is set."""
    found = previous_run_files(folder)
    if found and not (resume or overwrite):
        raise RunFolderError(f"--out {str(folder)!r} already holds a run ({', '.join(found)}): pass --resume to "
                             "continue it or --overwrite to replace it")


def remove_previous_run(folder):
    """Remove the previous run's files from ``folder`` (what ``--overwrite`` replaces); returns their names."""
    found = previous_run_files(folder)
    for name in found:
        (Path(folder) / name).unlink(missing_ok=True)
    return found


@contextmanager
def claim_run_folder(run, ranks):
    """Context manager around a training of ``run``: on rank 0, lock ``run.out`` (created if needed)
    and check that it may be used (:func:`check_vacant`); if not, every rank raises the same
    error. Rank 0 holds the lock until the context ends."""
    lock = failure = None
    if ranks.is_main:
        try:
            Path(run.out).mkdir(parents=True, exist_ok=True)
            lock = RunFolderLock(run.out).acquire()
            check_vacant(run.out, run.resume, run.overwrite)
        except BaseException as error:
            if lock is not None:
                lock.release()
                lock = None
            failure = error
    if ranks.distributed:
        # Every rank waits here for rank 0's verdict, so none goes on, or hangs, after it failed.
        verdict = [None if failure is None else _first_line(failure)]
        dist.broadcast_object_list(verdict, src=0)
        if failure is None and verdict[0] is not None:
            raise RunFolderError(verdict[0])
    if failure is not None:
        raise failure
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _same_file(descriptor, path):
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _read_pid(descriptor):
    try:
        text = os.pread(descriptor, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
