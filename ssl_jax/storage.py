"""Where files live: a local (or mounted) path, or a URL of an object store.

Local paths keep the plain `os` calls the rest of the package was written
with (rename-over for atomic writes, `flock` for the workdir's lock). A URL
(`gs://bucket/run`, `s3://...`, any scheme an installed fsspec filesystem
serves) goes through `etils.epath` for the schemes it knows (gs, s3, az, hf:
it picks TensorFlow's gfile or fsspec, as orbax does) and through fsspec for
the others (`memory://`, a test's stand-in).

What an object store does not have, and what the callers do instead:
- no rename-over: a whole object is written in one upload, which the store
  makes visible only when complete (`write_bytes`);
- no append: a growing file is rewritten whole (`append_line`);
- no lock: see `ssl_jax.workdir`.

`check(path, what)` tells, before anything runs, whether a URL can be used
here, in one line that names the package to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes epath serves itself (gs through TensorFlow's gfile when installed,
# else fsspec's gcsfs); others go to fsspec directly.
_EPATH_SCHEMES = ("gs", "s3", "az", "hf")


class StorageError(ValueError):
    """A path cannot be used as asked; the message says what to do."""


def scheme(path: str) -> str | None:
    """`gs` for `gs://bucket/x`; None for a local path."""
    match = _SCHEME.match(str(path))
    return match.group(1).lower() if match else None


def is_url(path: str) -> bool:
    return scheme(path) is not None


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def _fsspec_class(name: str):
    import fsspec

    return fsspec.get_filesystem_class(name)


def _package_of(name: str) -> str | None:
    """The package fsspec names for a scheme (`gcsfs` for gs), if any."""
    from fsspec.registry import known_implementations

    known = known_implementations.get(name)
    return known["class"].split(".")[0] if known else None


def check(path: str, what: str) -> None:
    """Nothing for a local path or a URL whose filesystem is installed; else
    one line naming the package to install (or saying the scheme is unknown)."""
    name = scheme(path)
    if name is None:
        return
    if name in ("gs", "gcs") and importlib.util.find_spec("tensorflow") is not None:
        return  # epath reads and writes gs:// through TensorFlow's gfile
    try:
        _fsspec_class(name)
    except ImportError:
        package = _package_of(name) or "its fsspec filesystem"
        hint = " (or tensorflow)" if name in ("gs", "gcs") else ""
        raise StorageError(f"{what}={path} needs {package}{hint}: pip install {package}") from None
    except ValueError:
        raise StorageError(
            f"{what}={path}: no filesystem is known for {name}://; pass a local or mounted "
            "path, or install the fsspec filesystem that serves it."
        ) from None


class _Fsspec:
    """The few pathlib-like calls used here, on an fsspec filesystem."""

    def __init__(self, path: str):
        import fsspec

        self._fs, self._path = fsspec.core.url_to_fs(path)

    def open(self, mode: str) -> IO[Any]:
        return self._fs.open(self._path, mode)

    def exists(self) -> bool:
        return self._fs.exists(self._path)

    def is_dir(self) -> bool:
        return self._fs.isdir(self._path)

    def mkdir(self, parents: bool, exist_ok: bool) -> None:
        self._fs.makedirs(self._path, exist_ok=exist_ok)

    def names(self) -> list[str]:
        return [posixpath.basename(p.rstrip("/")) for p in self._fs.ls(self._path, detail=False)]

    def unlink(self) -> None:
        self._fs.rm(self._path)

    def rmtree(self) -> None:
        self._fs.rm(self._path, recursive=True)

    def rename_to(self, target: str) -> None:
        self._fs.mv(self._path, _Fsspec(target)._path, recursive=True)

    def local_path(self) -> str | None:
        return _local_behind(self._fs, self._path)


class _Epath:
    def __init__(self, path: str):
        from etils import epath

        self._p = epath.Path(path)

    def open(self, mode: str) -> IO[Any]:
        return self._p.open(mode)

    def exists(self) -> bool:
        return self._p.exists()

    def is_dir(self) -> bool:
        return self._p.is_dir()

    def mkdir(self, parents: bool, exist_ok: bool) -> None:
        self._p.mkdir(parents=parents, exist_ok=exist_ok)

    def names(self) -> list[str]:
        return [p.name for p in self._p.iterdir()]

    def unlink(self) -> None:
        self._p.unlink()

    def rmtree(self) -> None:
        self._p.rmtree()

    def rename_to(self, target: str) -> None:
        self._p.rename(target)

    def local_path(self) -> str | None:
        return None


def _remote(path: str) -> _Fsspec | _Epath:
    return _Epath(path) if scheme(path) in _EPATH_SCHEMES else _Fsspec(path)


def _local_behind(fs, path: str) -> str | None:
    """The local path an fsspec filesystem stores `path` at, when it is the
    local disk underneath (`file://`, or a directory-prefixed view of it)."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return fs._strip_protocol(path)
    if isinstance(fs, DirFileSystem) and isinstance(fs.fs, LocalFileSystem):
        return os.path.join(fs.path, path.lstrip("/"))
    return None


# ----------------------------------------------------------------------------- operations


def open_file(path: str, mode: str = "r", **kwargs) -> IO[Any]:
    """A file object for reading or writing the whole file (no append on a URL)."""
    if not is_url(path):
        return open(path, mode, **kwargs)  # noqa: SIM115
    binary = mode.replace("t", "").replace("b", "") + "b"
    handle = _remote(path).open(binary)
    if "b" in mode:
        return handle
    import io

    return io.TextIOWrapper(handle, encoding="utf-8", **kwargs)


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_url(path) else _remote(path).exists()


def isdir(path: str) -> bool:
    return os.path.isdir(path) if not is_url(path) else _remote(path).is_dir()


def makedirs(path: str) -> None:
    if is_url(path):
        _remote(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    return os.listdir(path) if not is_url(path) else sorted(_remote(path).names())


def remove(path: str) -> None:
    if is_url(path):
        _remote(path).unlink()
    else:
        os.remove(path)


def move(source: str, target: str) -> None:
    """A file or directory moved. On an object store this is copy-then-delete,
    not atomic: a kill in between leaves both."""
    if is_url(source):
        _remote(source).rename_to(target)
    else:
        shutil.move(source, target)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def _on_this_disk(path: str) -> str:
    """A `file://` URL as the local path it names (fsspec's local files are
    written in place: the local branches keep writes atomic and appends
    appends); anything else as it is."""
    return (local_path(path) or path) if scheme(path) == "file" else path


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file so that no reader sees half of it, even after a
    kill: locally a temporary file, fsynced and renamed over the target; on an
    object store one upload, which becomes visible only once complete."""
    path = _on_this_disk(path)
    if is_url(path):
        makedirs(posixpath.dirname(path))  # no-op on a bucket; a disk-backed scheme needs it
        with open_file(path, "wb") as f:
            f.write(data)
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
    """`obj` as JSON, written whole by `write_bytes` (the package's one atomic
    JSON writer; `indent` and `sort_keys` keep each file's existing layout)."""
    write_bytes(path, json.dumps(obj, indent=indent, sort_keys=sort_keys).encode())


def append_line(path: str, line: str) -> None:
    """Adds a line to a text file: appended locally; on an object store
    (which cannot append) the whole file is read and written again."""
    path = _on_this_disk(path)
    if not is_url(path):
        with open(path, "a") as f:
            f.write(line)
        return
    old = read_bytes(path) if exists(path) else b""
    write_bytes(path, old + line.encode())


def local_path(path: str) -> str | None:
    """The local path of `path`: itself for a local path; for a URL, the
    place on this machine's disk its filesystem stores it, if it does (a
    `file://` URL, a local stand-in for a bucket), else None."""
    if not is_url(path):
        return path
    return _remote(path).local_path()


def upload_tree(local_dir: str, target: str, *, last: str | None = None) -> None:
    """Copies the files of `local_dir` (recursively) to the URL `target`;
    `last` (a file name at the top) is copied after every other file, so a
    reader that waits for it never sees a partial copy."""
    deferred = []
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            source = os.path.join(root, name)
            relative = os.path.relpath(source, local_dir).replace(os.sep, "/")
            if relative == last:
                deferred.append((source, relative))
                continue
            _copy_up(source, join(target, relative))
    for source, relative in deferred:
        _copy_up(source, join(target, relative))


def _copy_up(source: str, target: str) -> None:
    makedirs(posixpath.dirname(target))
    with open(source, "rb") as src, open_file(target, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)


@contextlib.contextmanager
def staged(path: str) -> Iterator[str]:
    """A local path to write `path` through, for writers that take only a
    local path (matplotlib, csv, PIL): `path` itself, or for a URL a
    temporary file uploaded in one piece when the block ends without error."""
    if not is_url(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ssl_jax_staged_") as directory:
        local = os.path.join(directory, posixpath.basename(path))
        yield local
        if os.path.exists(local):
            with open(local, "rb") as f:
                write_bytes(path, f.read())
