"""``python -m securechan``: the command line, as the console script runs it."""

from securechan.cli import main

main()
