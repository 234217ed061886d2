"""Tide's entry points: the `tide` command, the HTTP API and `tide stack`. They compose `jobs` and `workers`, so
they sit above both; nothing below imports this package."""
