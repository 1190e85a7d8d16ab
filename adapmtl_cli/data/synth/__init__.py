"""Generators of synthetic datasets, written in the on-disk layouts the readers of ``adapmtl_cli.data`` open."""
