"""Rejection-sampling fine-tuning (RSFT) for Crucible Kitchen, as an installable cookbook.

Importing this package imports nothing from kitchen: kitchen reads the entry points in
pyproject.toml by name and imports a module only when a run needs it.
"""

from pathlib import Path

RECIPES_DIR = Path(__file__).parent / "recipes"  # the crucible_kitchen.recipes entry point
