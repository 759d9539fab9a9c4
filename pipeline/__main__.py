"""``python -m pipeline``: the recloop command."""

from pipeline.cli import main

main()
