"""`python -m lazarus_bus` runs the CLI."""

from .entry import main

main()
