"""`python -m lazarus_bus` runs the CLI."""

from .cli import main

main()
