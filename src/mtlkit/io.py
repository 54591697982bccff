"""Atomic file writes: a file is either its old or its new content, never half written."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import torch

from mtlkit.errors import OutputError


class _Sink:
    """The file an atomic write goes through; remembers the OS error of a failed write.

    ``torch.save`` turns a failed write into an opaque ``RuntimeError [enforce fail ...]``; the
    remembered ``OSError`` (e.g. "No space left on device") is what the user is told instead.
    """

    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self.fh, self.path = fh, path
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def output_error(path: str | Path, err: BaseException) -> OutputError:
    """A one-line OutputError naming ``path`` and the OS error (a file in the way named as such)."""
    path = Path(path)
    if isinstance(err, FileExistsError | NotADirectoryError):
        for p in (path, *path.parents):
            if p.exists() and not p.is_dir():
                return OutputError(f"{p}: is a file, not a folder (cannot write {path})")
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    else:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OutputError(f"{path}: cannot write ({reason})")


#: how the temp files of :func:`_atomic` are named: ``.<target name>.<random>.tmp`` next to the target
TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_open_mode(path: Path) -> int:
    """The permission bits a plain ``open(path, "w")`` would leave: the file's own when it exists,
    else ``0o666`` less the umask (``mkstemp`` makes every temp file 0600, whatever the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _atomic(path: str | Path, write: Callable[[_Sink], object]) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise output_error(path.parent, err) from None
    try:
        os.fchmod(fd, _plain_open_mode(path))
    except OSError:  # a file system without permission bits: keep mkstemp's
        pass
    sink = None
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _Sink(fh, path)
            write(sink)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if sink is not None and sink.error is not None and isinstance(err, Exception):
            raise output_error(path, sink.error) from None
        if isinstance(err, OSError):
            raise output_error(path, err) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_safe(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN/inf float replaced by None, and the dotted paths of those values.

    JSON has no NaN or Infinity (Python's ``json`` would write bare ``NaN``/``Infinity``, which
    other readers reject); writers store null and say which values were not finite.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where or "value"]
    if isinstance(obj, dict):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], sub = json_safe(v, f"{where}.{k}" if where else str(k))
            bad += sub
        return out, bad
    if isinstance(obj, list | tuple):
        items = [json_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [b for _, sub in items for b in sub]
    return obj, []


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as null, see :func:`json_safe`)."""
    return json.dumps(json_safe(obj)[0], indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through a temp file and rename, so a kill never leaves a broken checkpoint."""
    # the sink is what torch.save writes to: it only calls write and flush, which _Sink forwards
    _atomic(path, lambda fh: torch.save(obj, cast(IO[bytes], fh)))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files interrupted atomic writes left in ``folder`` (not below); the removed paths.

    Call it only where no other process writes (a run folder under its run lock): a temp file of a
    write in progress looks the same as one a killed process left.
    """
    removed = []
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def damaged_zip_member(path: str | Path) -> str | None:
    """The first member of the zip archive ``path`` whose CRC-32 does not match (None: all intact).

    ``torch.load`` does not check the CRCs ``torch.save`` writes, so a checkpoint with a block of
    bytes overwritten inside a tensor would load as different weights; this reads every member once.
    A damaged archive directory counts as damaged too (``"(archive directory)"``).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError):
        return "(archive directory)"
    except OSError as err:
        if err.errno is None:  # zlib/zipfile reporting corrupt data
            return "(archive directory)"
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (for stale partial files and locks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
