"""Reports of runs: ``report.json`` built, read into views, rendered as tables, text, HTML and plots."""
