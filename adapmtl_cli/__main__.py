"""Entry point for ``python -m adapmtl_cli``."""

from adapmtl_cli.cli.app import main

main()
