"""medvtab: adapt general and medical vision foundation models to medical imaging tasks.

The Python API (:mod:`medvtab.api`) loads on first use of one of its names, so ``import medvtab`` stays light
for the command line.
"""
__version__ = "0.1.0"

_API = ("TrainConfig", "create_model", "evaluate", "fit", "load", "load_backbones", "load_task", "save")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from medvtab import api  # torch and the engine load here, on first use: keeps CLI start-up fast

        return getattr(api, name)
    raise AttributeError(f"module 'medvtab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
