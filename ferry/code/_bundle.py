"""A folder of code as one deterministic, content-addressed ``.tar.gz``.

The same files give the same archive, hence the same digest, on any machine: entries in sorted
order, no timestamps, owners or permissions beyond "executable or not". The digest is the
sha256 of the tar itself, not of its gzip, so it names the content whatever compressed it, and
a store or proxy that hands the tar back decompressed (an S3 object served with
``Content-Encoding: gzip``) still matches. What goes in follows the folder's own rules: every ``.gitignore``
and ``.ferryignore`` on the way down (git's syntax; ``.ferryignore`` is read after
``.gitignore`` in the same folder, so it can also re-include with ``!``), and never ``.git/``,
``.ferry/`` (the local store) or ``__pycache__/``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.errors import FerryError

ALWAYS_LEFT_OUT = (".git", ".ferry", "__pycache__")
IGNORE_FILES = (".gitignore", ".ferryignore")
MiB = 1024 * 1024


class BundleError(FerryError):
    """The folder cannot be bundled: too large, a link leading out of it, nothing in it."""


@dataclass(frozen=True)
class Bundle:
    """The bundled code: the archive's bytes and what identifies it."""

    root: Path
    data: bytes  # the .tar.gz as stored
    digest: str  # sha256:<64 hex digits> of the tar inside ``data``
    files: int
    unpacked_bytes: int

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]

    @property
    def name(self) -> str:
        """The bundle's file name in a store: the same name for the same content."""
        return bundle_name(self.digest)


def bundle_name(digest: str) -> str:
    return f"sha256-{digest.partition(':')[2]}.tar.gz"


def _rules(folder: Path) -> list[Any]:
    """The ignore rules ``folder`` itself declares, in the order they apply."""
    import pathspec

    specs = []
    for name in IGNORE_FILES:
        path = folder / name
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            specs.append(pathspec.GitIgnoreSpec.from_lines(lines))
    return specs


def _ignored(rel: str, is_dir: bool, stack: list[tuple[str, list[Any]]]) -> bool:
    """Whether ``rel`` (a path below the root, '/'-separated) is left out by the rules of the
    folders above it: the deepest rule that matches decides, as in git."""
    verdict = False
    for base, specs in stack:
        sub = rel[len(base) + 1:] if base else rel
        if base and not rel.startswith(base + "/"):
            continue
        candidate = sub + "/" if is_dir else sub
        for spec in specs:
            result = spec.check_file(candidate)
            if result.include is not None:
                verdict = result.include
    return verdict


def collect(root: Path) -> list[tuple[str, Path]]:
    """Every path the bundle of ``root`` holds, as (name in the archive, path here), sorted:
    regular files, and links that stay inside ``root``."""
    root = root.resolve()
    found: list[tuple[str, Path]] = []
    stack: list[tuple[str, list[Any]]] = []

    def walk(folder: Path, rel: str) -> None:
        rules = _rules(folder)
        if rules:
            stack.append((rel, rules))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError as exc:
            raise BundleError(f"code bundle: cannot read {folder}: {exc.strerror}; list it in .ferryignore") from exc
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            path = Path(entry.path)
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.name in ALWAYS_LEFT_OUT and (is_dir or is_link):
                continue
            if entry.name.endswith((".pyc", ".pyo")) or _ignored(name, is_dir, stack):
                continue
            if is_link:
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise BundleError(f"code bundle: {name} links outside {root} (to {target}); copy what it "
                                      "points to into the folder, or list it in .ferryignore")
                found.append((name, path))
            elif is_dir:
                walk(path, name)
            elif entry.is_file(follow_symlinks=False):
                found.append((name, path))
        if rules:
            stack.pop()

    walk(root, "")
    return found


def folder(root: Path) -> Path:
    """``root`` as a folder to bundle; a BundleError when it is none."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"code bundle: {root} is not a folder; give --code the folder to ship (the project root)")
    return root


def build_bundle(root: Path, max_bytes: int) -> Bundle:
    """The bundle of ``root``; a BundleError, naming the largest files, when its archive would
    be larger than ``max_bytes``."""
    root = folder(root)
    entries = collect(root)
    if not entries:
        raise BundleError(f"code bundle: nothing to bundle in {root} (every file is ignored); check .gitignore/.ferryignore")
    sizes = {name: (path.lstat().st_size if not path.is_symlink() else 0) for name, path in entries}
    unpacked = sum(sizes.values())
    if unpacked > 8 * max_bytes:  # too large whatever gzip makes of it: say so before reading it all
        raise _too_large(root, sizes, unpacked, max_bytes, "unpacked")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries:
            _add(tar, name, path, root.resolve())
    data = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    if len(data) > max_bytes:
        raise _too_large(root, sizes, unpacked, max_bytes, "compressed")
    return Bundle(root=root, data=data, digest=digest_of(data), files=len(entries), unpacked_bytes=unpacked)


def as_tar(data: bytes) -> bytes:
    """A bundle's tar, whether ``data`` is the stored .tar.gz or the tar a store decompressed."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def digest_of(data: bytes) -> str:
    """The digest of a bundle's bytes (gzipped or not): sha256:<hex> of its tar."""
    return "sha256:" + hashlib.sha256(as_tar(data)).hexdigest()


def _add(tar: tarfile.TarFile, name: str, path: Path, root: Path) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.path.relpath(path.resolve(), path.parent.resolve())
        info.mode = 0o777
        tar.addfile(info)
        return
    info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    info.size = st.st_size
    with open(path, "rb") as fh:
        tar.addfile(info, fh)


def _too_large(root: Path, sizes: dict[str, int], unpacked: int, max_bytes: int, measure: str) -> BundleError:
    largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:5]
    listed = ", ".join(f"{name} ({size / MiB:.1f} MiB)" for name, size in largest)
    return BundleError(
        f"code bundle of {root} is over the limit of {max_bytes / MiB:.0f} MiB {measure} "
        f"({len(sizes)} files, {unpacked / MiB:.1f} MiB unpacked); largest: {listed}. "
        "List data and build outputs in .ferryignore (git's syntax), or raise FERRY_CODE_MAX_MB"
    )


def unpack(data: bytes, dest: Path) -> int:
    """Unpack a bundle's bytes into the empty folder ``dest`` (made if absent); the number of
    files. tarfile's ``data`` filter refuses absolute names, ``..``, devices and links out."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(as_tar(data)), mode="r:") as tar:
        members = tar.getmembers()
        tar.extractall(dest, members=members, filter="data")
    return len(members)
