"""Command-line interface. Each subcommand lives in its own module under ``segany.cli``."""
