"""``python -m snapref`` runs the command line."""

from snapref.cli import main

main()
