"""Leaving the interpreter without its garbage collector's last passes.

When a program ends, CPython clears every module and runs full collections over what that
frees. In a process that imported torch (optimizers pull in ``torch._dynamo``) and MLflow these
passes walk over a million objects: one to three seconds of CPU after the program's last line
(measured on 2 cores), during which a replica has not exited and its job has not finished.

``skip_exit_collection()`` registers ``gc.freeze()`` as an exit handler, which moves every
object to the permanent generation that those passes skip. Nothing that has to happen at exit
is lost: the wait for non-daemon threads and thread pools (a checkpoint still being written)
comes before the exit handlers, the exit handlers all still run (MLflow's, logging's), the
standard streams are still flushed, and objects are still freed by reference counting as
modules are cleared. Only reference cycles alive at exit are left to the operating system, as
Python allows ("it is not guaranteed that ``__del__()`` methods are called for objects that
still exist when the interpreter exits", the language reference on ``object.__del__``).
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def skip_exit_collection() -> None:
    """Make this process's exit skip the collector's passes over module teardown (once)."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
