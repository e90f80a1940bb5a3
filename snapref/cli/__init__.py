"""The ``snapref`` command line: a thin layer over :mod:`snapref`'s Python API.

Every command that prints data takes ``--json``. Errors print ``Error: ...`` and exit
with code 1; usage errors exit with code 2. Commands live in modules by topic; each
registers itself on the group defined in :mod:`snapref.cli._common`.
"""

from snapref.cli import (
    catalog,  # noqa: F401  (catalog, ls, describe, ingest)
    core,  # noqa: F401  (registers the commands)
    history,  # noqa: F401  (diff, blame, merge, audit, query, ...)
)
from snapref.cli._common import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``snapref`` script."""
    cli(prog_name="snapref")
