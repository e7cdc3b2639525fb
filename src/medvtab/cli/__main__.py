"""``python -m medvtab.cli``: what the ``medvtab`` script runs (torchrun launches it this way)."""
from medvtab.cli import main

main()
