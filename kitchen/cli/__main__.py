"""``python -m kitchen.cli ...`` is the ``kitchen`` command."""

from kitchen.cli.commands import main

main()
