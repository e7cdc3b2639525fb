"""``python -m medvtab.cli``: what the ``medvtab`` script runs (torchrun launches it this way)."""
from medvtab.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports the main module
    main()
