"""Acceleration options shared by ``medvtab train`` (the engine) and ``medvtab perf``: gradient checkpointing of
the backbone blocks, and ``torch.compile`` with an eager fallback.

Gradient checkpointing (:func:`set_grad_checkpointing`) recomputes each backbone block in the backward pass
instead of keeping its activations: less memory for methods that train through (frozen or trained) blocks, about
one more forward of compute, the same losses and gradients (the recomputation runs the same operations).

:class:`CompiledForward` compiles a module's ``forward`` in place (an instance attribute), so the module stays
what it was: its state dict, its other methods, and a DDP / Fabric wrapper around it (PyTorch's advice for DDP
is to compile the inner module). Where ``torch.compile`` raises, or the first compiled call in a mode (training
or evaluation, with or without autograd) raises, or a later recompilation fails, the forward runs eagerly from
then on and the reason is kept. :func:`compile_with_fallback` is the same fallback for a one-off callable;
:func:`compile_for_training` compiles a model for the training loop.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from medvtab.backbones import Backbone
from medvtab.engine.precision import autocast
from medvtab.errors import first_line


def set_grad_checkpointing(model: nn.Module, on: bool) -> int:
    """Turn gradient checkpointing on or off in every :class:`medvtab.backbones.Backbone` inside ``model`` (the
    backbones honour it in ``block`` while autograd records); returns how many backbones were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, Backbone):
            module.grad_checkpointing = on
            count += 1
    return count


def failure_reason(err: BaseException) -> str:
    """One line naming an exception: its type and the first line of its message (cut at a word, about 200
    characters)."""
    return f"{type(err).__name__}: {first_line(err, 200)}"


def compile_with_fallback(fn: Callable, probe: Callable[[Callable], object] | None = None
                          ) -> tuple[Callable, str | None]:
    """``(torch.compile(fn), None)`` where compiling and ``probe(compiled)`` (a first call, which is where
    compilation happens) succeed, else ``(fn, reason)``: run eagerly."""
    try:
        compiled = torch.compile(fn)
        if probe is not None:
            probe(compiled)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
        return fn, failure_reason(err)
    return compiled, None


def _compiler_error(err: BaseException) -> bool:
    try:  # imported only once compiling failed: torch._dynamo is slow to import and most runs never compile
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return isinstance(err, TorchDynamoException)


class CompiledForward:
    """``module.forward`` replaced by its ``torch.compile``-d form, with an eager fallback (see the module doc).

    ``CompiledForward(module)`` installs itself; :meth:`check` runs a first step (e.g. a forward and backward in
    training mode: the backward is compiled lazily, at its first call) and falls back where it raises;
    :meth:`disable` falls back for a reason found elsewhere (another process's failure); :meth:`remove` restores
    the eager forward. ``in_effect`` / ``fallback`` / :meth:`record` say how it went; ``on_fallback(reason)`` is
    called once, when it falls back. CUDA out of memory is never taken for a compiler failure: it propagates."""

    def __init__(self, module: nn.Module, on_fallback: Callable[[str], None] | None = None):
        self.module = module
        self.eager = module.forward  # the class's bound forward
        self.fallback: str | None = None
        self.on_fallback = on_fallback
        self._proven: set[tuple[bool, bool]] = set()  # (training, grad enabled) modes whose first call ran
        try:
            self.compiled = torch.compile(self.eager)
        except Exception as err:  # noqa: BLE001 - e.g. no dynamo on this Python: run eagerly
            self.compiled = None
            self.disable(f"torch.compile: {failure_reason(err)}")
        module.forward = self

    @property
    def in_effect(self) -> bool:
        return self.compiled is not None and self.fallback is None

    def disable(self, reason: str) -> None:
        if self.fallback is None:
            self.fallback = reason
            if self.on_fallback is not None:
                self.on_fallback(reason)

    def record(self) -> dict:
        return {"requested": True, "in_effect": self.in_effect, "fallback": self.fallback}

    def remove(self) -> None:
        if self.module.__dict__.get("forward") is self:
            del self.module.forward

    def check(self, step: Callable[[], object], what: str) -> bool:
        """Run ``step`` (which calls the module); a failure means running eagerly. True where still compiled."""
        if not self.in_effect:
            return False
        try:
            step()
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.disable(f"{what}: {failure_reason(err)}")
        return self.in_effect

    def __call__(self, *args: Any, **kwargs: Any):
        if not self.in_effect:
            return self.eager(*args, **kwargs)
        mode = (self.module.training, torch.is_grad_enabled())
        first = mode not in self._proven
        try:
            out = self.compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - first call: any failure; later: a failed recompilation
            if not (first or _compiler_error(err)):
                raise
            phase = "training" if self.module.training else "evaluation"
            self.disable(f"{'first' if first else 'a later'} compiled {phase} call: {failure_reason(err)}")
            return self.eager(*args, **kwargs)
        self._proven.add(mode)
        return out


FEATURE_CACHING_NOT_COMPILED = ("not applied: a feature-caching method (its backbone features are computed once "
                                "and its head trains on them)")


def compile_for_training(model: nn.Module, probe_images: torch.Tensor, device: torch.device,
                         fabric=None, on_note: Callable[[str], None] = print) -> CompiledForward:
    """``model.forward`` compiled (:class:`CompiledForward`), tried by forward and backward passes in training
    mode on the first two, then three ``probe_images`` (a second batch size makes the compiler build the graph
    for any batch size, so the run's batches need no further compilation; each backward is compiled at its first
    call), with the random state restored and the gradients cleared afterwards, so the run goes on as it would
    have. Under ``fabric`` every process falls back where any could not compile. Call on the bare model, before
    ``fabric.setup``: DDP then wraps the module whose forward is compiled (PyTorch's advice for DDP), and
    evaluation, which runs the bare model, is compiled too. A fallback, here or later, is noted."""
    torch._dynamo.reset()  # a fresh cache per run: many runs in one process (grids) must not reach its limit
    compiled = CompiledForward(model, lambda reason: on_note(f"note: --compile: running eagerly from here on "
                                                             f"({reason})"))

    def probe() -> None:
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            model.train()
            for n in sorted({min(2, len(probe_images)), min(3, len(probe_images))}):
                with autocast(device):
                    loss = model(probe_images[:n].to(device)).float().sum()
                    aux = model.auxiliary_loss()
                    if aux is not None:
                        loss = loss + aux
                loss.backward()

    try:
        compiled.check(probe, "first compiled training step")
    finally:
        for p in model.parameters():
            p.grad = None
    if fabric is not None:
        ok = fabric.all_reduce(torch.tensor(float(compiled.in_effect), device=fabric.device), reduce_op="mean")
        if float(ok) < 1.0:
            compiled.disable("another process of the run could not compile (every process runs eagerly)")
    return compiled
