"""``medvtab perf``: speed, memory and FLOPs of the backbones and methods, measured in one process."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medvtab.cli.common import err_console
from medvtab.errors import MedvtabError


def perf(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (for machines) instead of tables."),
    general: str = typer.Option("tiny-general", help="General-domain backbone spec, or random:NAME for a real "
                                                     "layout from random weights (random:dinov2-vitb14; on a GPU "
                                                     "with random:lvmmed-vitb: the paper's ViT-B pair)."),
    medical: str = typer.Option("tiny-medical", help="Medical-domain backbone spec, or random:lvmmed-vitb."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (bf16 autocast and SDPA attention on a GPU; the "
                                           "GPU path has not been run on a GPU yet)."),
    quick: bool = typer.Option(False, "--quick", help="A few seconds: tiny batches, 2 rounds, 3 methods (smoke "
                                                      "tests; the numbers mean little)."),
    rounds: Optional[int] = typer.Option(None, min=1, help="Timed rounds per forward measurement (default: 9 on a "
                                                           "CPU, 20 on a GPU)."),
    batch_sizes: Optional[str] = typer.Option(None, help="Batch sizes of the backbone measurement, comma-separated "
                                                         "(default 1,32,256)."),
    skip_batch_sizes: Optional[str] = typer.Option(None, help="Batch sizes of the keep-ratio table (default 32,256)."),
    train_batch: Optional[int] = typer.Option(None, min=1, help="Batch size of the training steps and the loading "
                                                                "measurement (default 32 on a CPU, 256 on a GPU)."),
    methods: Optional[str] = typer.Option(None, help="Only these methods in the training-step measurement "
                                                     "(comma-separated; DynaMer is always included)."),
    threads: Optional[int] = typer.Option(1, min=1, help="torch CPU threads (default 1: steadier on a shared "
                                                         "machine; ratios are what the CPU targets are about)."),
    compile_: bool = typer.Option(False, "--compile", help="Wrap the timed models in torch.compile (eager where "
                                                           "compiling fails; the reason is recorded). Meant for "
                                                           "GPUs: on a CPU compiling takes minutes."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Gradient checkpointing of the backbone "
                                                                      "blocks in the training steps."),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON to this file."),
):
    """Measure forward and training speed, memory, FLOPs, data loading and linear-probe epochs in one process
    (interleaved repetitions, warm-up excluded, medians and interquartile ranges)."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.perf.report import dumps, print_tables
    from medvtab.perf import PerfConfig, run_perf

    def sizes(text: Optional[str], option: str):
        if text is None:
            return None
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise MedvtabError(f"option '{option}': expected positive integers separated by commas, got '{text}'")
        return values

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods is not None else None
    cfg = PerfConfig.for_profile(device, quick, general=general, medical=medical, rounds=rounds,
                                 batch_sizes=sizes(batch_sizes, "--batch-sizes"),
                                 skip_batch_sizes=sizes(skip_batch_sizes, "--skip-batch-sizes"),
                                 train_batch=train_batch, methods=method_list, threads=threads,
                                 compile=compile_, checkpointing=checkpointing)
    result = run_perf(cfg, on_progress=lambda name: err_console.print(f"perf: {name}", markup=False)
                      if not as_json and err_console.is_terminal else None)
    text = dumps(result)
    if out is not None:
        out.write_text(text + "\n")
    if as_json:
        print(text)
    else:
        print_tables(result)
