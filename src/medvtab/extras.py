"""Optional dependencies: each optional part imports its package through :func:`require`, which names the extra
that installs it (``pip install 'medvtab[EXTRA]'``, see docs/install.md) instead of failing with an ImportError."""
from __future__ import annotations

import importlib

from medvtab.errors import MedvtabError


def require(module: str, *, extra: str, feature: str, package: str | None = None):
    """``module``, imported; if it cannot be, a one-line error saying that ``feature`` needs ``package`` (the
    distribution, by default the module's top-level name) and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MedvtabError(f"{feature} needs {package or module.partition('.')[0]}: "
                           f"install medvtab[{extra}]") from None
