"""Progress bars for long operations (import, ingest, checkout, commit).

Library code reports progress through :func:`bar`; by default that does nothing, so
scripts, tests and piped output stay silent. The command line turns bars on with
:func:`enabled` when standard error is a terminal and ``--quiet`` is not given::

    with progress.bar(len(records), "Reading references") as tick:
        for record in records:
            ...
            tick(1)

The switch is a context variable, so it holds for the current thread or task only:
a web service running several imports never draws bars on a server console.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Tick", "bar", "enabled", "is_enabled", "items", "should_show"]

#: Advances a bar by the given number of steps.
Tick = Callable[[int], None]

_ENABLED: ContextVar[bool] = ContextVar("snapref_progress", default=False)


def should_show(quiet: bool) -> bool:
    """Whether the CLI should draw bars: not ``--quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Draw progress bars inside this block (on standard error) when ``on``."""
    token = _ENABLED.set(on)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def is_enabled() -> bool:
    return _ENABLED.get()


def _ignore(_steps: int) -> None:
    pass


@contextmanager
def bar(total: int, label: str) -> Iterator[Tick]:
    """A bar of ``total`` steps labelled ``label``; yields the function that advances it.

    Draws nothing unless enabled (see :func:`enabled`) and ``total`` is positive.
    """
    if not _ENABLED.get() or total <= 0:
        yield _ignore
        return
    import click  # only the CLI draws bars: library imports stay light

    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True
    ) as progress:
        yield progress.update


def items[T](iterable: Iterable[T], total: int, label: str, step: int = 10_000) -> Iterator[T]:
    """``iterable``, advancing a bar of ``total`` items every ``step`` items (large
    totals only: a bar for a few items is noise)."""
    with bar(total if total > step else 0, label) as tick:
        done = 0
        for item in iterable:
            yield item
            done += 1
            if done == step:
                tick(done)
                done = 0
        tick(done)
