"""``python -m kitchen``: the CLI, so ``torchrun --nproc-per-node N -m kitchen run ...`` works."""

from kitchen.cli.commands import main

if __name__ == "__main__":
    main()
