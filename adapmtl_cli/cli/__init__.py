"""The command line: the Typer app, its options, one module of commands per job, the console, the docs."""
