"""The command-line edge: the Typer commands (``commands``) and what they print (``views``).

``main`` is the console script's entry point (``kitchen = "kitchen.cli:main"``).
"""

from kitchen.cli.commands import app, main

__all__ = ["app", "main"]
