"""One run on several processes (GPUs, or CPU processes with gloo) through Lightning Fabric's DDP.

Two ways in, one code path:

- ``medvtab train --devices N [--num-nodes M]``: Fabric starts the N processes of this machine itself (each
  re-runs the same command);
- ``torchrun --nproc-per-node N [--nnodes M ...] -m medvtab.cli train ...``: the launcher starts them and
  Fabric reads its environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

What is distributed: every global batch (``--batch-size``) is split across the processes (process r takes
positions r, r + W, ...) and DDP averages the gradients, so the optimisation is the single-process one up to
floating-point order; augmentation is drawn for the whole global batch on every process, so the random stream
is the single-process one too. Validation and test run in full on every process (identical weights give
identical early-stopping decisions); only global rank 0 writes the run directory.
"""
from __future__ import annotations

import os

from medvtab.errors import MedvtabError
from medvtab.extras import require

TORCHRUN_VARS = ("LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK")


def under_launcher() -> bool:
    """True inside a torchrun (torchelastic) process group of more than one process."""
    return all(v in os.environ for v in TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


STRATEGIES = ("ddp", "fsdp")


def launch(device: str, devices: int, num_nodes: int, strategy: str = "ddp"):
    """A launched Fabric for a multi-process run, or None for a single process.

    ``strategy``: "ddp" (every process holds the whole model) or "fsdp" (Fabric's fully sharded data parallel:
    parameters, gradients and optimizer state sharded across the processes; CUDA only)."""
    if devices < 1 or num_nodes < 1:
        raise MedvtabError(f"options '--devices' / '--num-nodes': must be at least 1, got {devices} / {num_nodes}")
    cuda = device.startswith("cuda")
    if strategy not in STRATEGIES:
        raise MedvtabError(f"option '--strategy': expected one of {', '.join(STRATEGIES)}, got '{strategy}'")
    if strategy == "fsdp" and not cuda:
        raise MedvtabError("option '--strategy': fsdp needs CUDA devices (Fabric's FSDP has no CPU backend); "
                           "use ddp on CPU")
    if under_launcher():
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = int(os.environ["WORLD_SIZE"]) // devices
    elif devices == 1 and num_nodes == 1:
        return None
    # the optional extra medvtab[distributed], imported once required
    require("lightning_fabric", extra="distributed", feature="training on several processes",
            package="lightning-fabric")
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy, FSDPStrategy

    if strategy == "fsdp":
        chosen = FSDPStrategy(use_orig_params=True)  # frozen and trainable weights share the wrapped units
    else:  # experts a router did not pick in a step get no gradient: DDP must not wait for them
        chosen = DDPStrategy(process_group_backend="nccl" if cuda else "gloo", find_unused_parameters=True)
    fabric = Fabric(accelerator="cuda" if cuda else "cpu", devices=devices, num_nodes=num_nodes, strategy=chosen)
    fabric.launch()
    return fabric
