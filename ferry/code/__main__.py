"""``python -m ferry.code -- COMMAND...``: a replica's first step when its job ships a code bundle.

With ``FERRY_CODE_URI`` and ``FERRY_CODE_DIGEST`` set (the rendered manifest sets both), it
fetches the bundle, refuses it unless its sha256 is the digest the job names, unpacks it into
``FERRY_CODE_DIR`` (an emptyDir in a pod; a restarted container finds it already there), puts
it first on ``PYTHONPATH``, changes into it and replaces itself with COMMAND. Without them it
runs COMMAND as it is, so an image can make it its entrypoint.

Exit codes before COMMAND runs: 2 the bundle is refused (wrong digest, not in its store, bad
settings), 10 its store did not answer after the retries. One line on stderr says why.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ferry import settings
from ferry.errors import FerryError, Unreachable

ATTEMPTS = 5


def _say(text: str) -> None:
    print(f"ferry.code: {text}", file=sys.stderr, flush=True)


def _fetch(uri: str) -> bytes:
    from ferry.code._store import download

    delay = 1.0
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return download(uri)
        except Unreachable as exc:
            if attempt == ATTEMPTS:
                raise
            _say(f"{exc} (attempt {attempt}/{ATTEMPTS}; again in {delay:.0f} s)")
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def prepare(uri: str, digest: str, base: Path) -> Path:
    """The folder holding the bundle ``uri`` unpacked, checked against ``digest``."""
    from ferry.code._bundle import digest_of, unpack

    expected = digest.partition(":")[2]
    if not digest.startswith("sha256:") or len(expected) != 64:
        raise FerryError(f"FERRY_CODE_DIGEST={digest!r}: a digest is sha256:<64 hex digits>")
    dest = base / expected[:16]
    marker = base / f"{expected[:16]}.digest"
    if dest.is_dir() and marker.is_file() and marker.read_text().strip() == digest:
        return dest  # this pod unpacked it before (a restarted container)
    data = _fetch(uri)
    actual = digest_of(data)
    if actual != digest:
        raise FerryError(f"the bundle at {uri} has digest {actual}, not the job's {digest}: refusing to run it "
                         "(it was changed in its store); submit the job again to upload the code")
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(".staging-*"):  # a fetch cut short by a restart
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    try:
        files = unpack(data, staging)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    marker.write_text(digest + "\n")
    _say(f"{digest} ({files} files) from {uri} in {dest}")
    return dest


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _say("give the command to run after --, e.g. python -m ferry.code -- python -m jobs.digits.train")
        return 2
    uri, digest = settings.FERRY_CODE_URI.get(), settings.FERRY_CODE_DIGEST.get()
    if uri:
        if not digest:
            _say("FERRY_CODE_URI is set without FERRY_CODE_DIGEST: a bundle is run only when its digest is known")
            return 2
        base = Path(settings.FERRY_CODE_DIR.get() or Path(tempfile.gettempdir()) / "ferry-code")
        try:
            folder = prepare(uri, digest, base)
        except FerryError as exc:
            _say(str(exc))
            return exc.exit_code
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
        os.chdir(folder)
    if argv[0] in ("python", "python3"):
        argv = [sys.executable, *argv[1:]]  # the interpreter this image runs Ferry with
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _say(f"cannot run {argv[0]!r}: {exc.strerror}")
        return 127
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
