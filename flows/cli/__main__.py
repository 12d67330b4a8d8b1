"""``python -m flows.cli``: the ``daug`` command line."""

from flows.cli import run

run()
