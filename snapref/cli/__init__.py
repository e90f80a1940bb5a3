"""The ``snapref`` command line: a thin layer over :mod:`snapref`'s Python API.

Every command that prints data takes ``--json``. Errors print ``Error: ...`` and exit
with code 1; usage errors exit with code 2. Commands live in modules by topic; each
registers itself on the group defined in :mod:`snapref.cli._common`.
"""

import os
import sys

from snapref.cli import (
    catalog,  # noqa: F401  (catalog, ls, describe, ingest)
    core,  # noqa: F401  (registers the commands)
    history,  # noqa: F401  (diff, blame, merge, audit, query, ...)
)
from snapref.cli._common import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``snapref`` script.

    The process ends with ``os._exit`` once the command is done and its output
    flushed: the native thread pools of Arrow (and DuckDB) can abort the interpreter's
    own teardown ("terminate called without an active exception", exit 134; apache/
    arrow#34314), after everything had worked. Nothing is left to do at that point:
    files are closed and catalog transactions committed by then.
    """
    try:
        cli.main(prog_name="snapref")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
