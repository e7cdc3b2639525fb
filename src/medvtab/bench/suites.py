"""The built-in grids, one function per suite, on the bundled tiny experts and bundled data (no data root).

``mini``: the report's main table (every method x retinamnist, pneumoniamnist, breastmnist), the patient-OOD
table on the Kermany chest X-rays (the DynaMer paper's Tables 8-9) and data-efficiency curves (few-shot
fractions). ``mini-ablations``: DynaMer's ablation grids on one colour task (the paper's Tables 4-7).

Budgets were chosen by measuring on the 2-core CPU machine medvtab is developed on (torch 2.14.1), which other
developers' jobs share (load average 3-8 during these measurements):

* threads. One torch thread per run (``medvtab bench`` default, ``--threads``): with two threads, OpenMP stalls
  whenever another job holds a core. DynaMer, 64 BreastMNIST train images, 1 epoch (load, checks, training,
  validation and test): at load 6, 19.0 s with ``torch.set_num_threads(2)`` and 4.3 s with one thread; at
  load 3, 14.4 and 20.2 s with two threads and 3.0 s (twice) with one. The quick suite with two threads had
  done 38 of its 55 runs after 10 minutes; with one thread all 55 took 2.5 minutes. A grid scales across
  processes instead (``--executor ray --workers N``, one thread each).
* cost per method: CPU seconds of one run of 1 epoch (512 PneumoniaMNIST train images, then the 524 validation
  and the 624 test images, load and checks included), one thread:
      linear 3.1 (backbone features computed once), partial 3.2, full 4.2, vpt-shallow 4.4, vpt-deep 5.1,
      gapt 5.2, lspt 5.3, adapter-general 6.3, lora 6.3, adapter-medical 7.8, dynamer 9.7, mof-adapter 11.8,
      moe-adapter 13.4, gmoe-adapter 16.2      (all 14: 102 s; RetinaMNIST 74 s, BreastMNIST 65 s)
  The dual-stream methods run both backbones and cost 2-4x a single-stream one; full fine-tuning is cheap on
  these 457k-parameter backbones. Each further epoch costs about three quarters of such a run.

Profiles (runs: main 42, patient-ood 15, fewshot 12 for ``mini``; 17 for ``mini-ablations``, whose default
configuration is the main table's RetinaMNIST DynaMer run when both suites share a store):

* default: 3 epochs (patience 2: the best validation epoch's weights are kept), batch 32, train capped at
  256 images (retinamnist 1080, pneumoniamnist 4708 and breastmnist 546 -> 256; validation and test sets
  whole); patient-OOD with the paper's Table 8 settings on 160 patients (100/60, 80/80, 60/100 seen/unseen);
  few-shot fractions 0.1, 0.3, 1.0 of BreastMNIST's 546 train images. Measured (nice, load 1-4):
  ``mini`` 540 s wall (455 CPU-s), ``mini-ablations`` 251 s wall (159 CPU-s): 13 minutes for both. With a
  cap of 384 the two took 29 minutes at load 4-7 (12.5 CPU-minutes): too close to the 30-minute budget.
* quick: 1 epoch, train capped at 64, one patient-OOD setting (100 seen / 60 unseen), fractions 0.1 and 0.3:
  ``mini --quick`` measured 134 s wall at load 1 (122 CPU-s; 241 s at load 5-6 with a cap of 128).

``--seeds 3`` (the real comparison) triples the time. ``configs/mini.yaml`` is the default profile as YAML.
"""
from __future__ import annotations

from medvtab.bench.grid import GridConfig, GroupConfig, ProtocolConfig
from medvtab.errors import MedvtabError

MINI_TASKS = ["retinamnist", "pneumoniamnist", "breastmnist"]
OOD_TASK = "kermany-cxr"  # pooled, with patient ids
OOD_METHODS = ["linear", "vpt-deep", "adapter-medical", "gmoe-adapter", "dynamer"]
FEWSHOT_TASK = "breastmnist"
FEWSHOT_METHODS = ["linear", "full", "adapter-medical", "dynamer"]
ABLATION_TASK = "retinamnist"  # colour fundus images, as the paper's ablations (colour tasks)

# The training budget of each profile: TrainConfig fields (early stopping on the validation split only) and
# the train-set cap of the standard and patient-ood protocols.
BUDGETS = {
    "default": {"train": {"epochs": 3, "batch_size": 32, "patience": 2}, "train_size": 256},
    "quick": {"train": {"epochs": 1, "batch_size": 32}, "train_size": 64},
}
# The paper's Table 8: 160 patients, seen / unseen.
OOD_SPLITS = {"default": [(100, 60), (80, 80), (60, 100)], "quick": [(100, 60)]}
FEWSHOT_FRACTIONS = {"default": [0.1, 0.3, 1.0], "quick": [0.1, 0.3]}


def _profile(quick: bool) -> str:
    return "quick" if quick else "default"


def mini(quick: bool = False) -> GridConfig:
    """Every method on the three mini tasks, the patient-OOD table and the few-shot curves."""
    profile = _profile(quick)
    budget = BUDGETS[profile]
    return GridConfig(
        name="mini", seeds=1, train=budget["train"], train_size=budget["train_size"],
        groups={
            "main": GroupConfig(tasks=MINI_TASKS, methods="all"),
            "patient-ood": GroupConfig(
                tasks=[OOD_TASK], methods=OOD_METHODS,
                protocols=[ProtocolConfig(name="patient-ood", seen=s, unseen=u) for s, u in OOD_SPLITS[profile]]),
            "fewshot": GroupConfig(
                tasks=[FEWSHOT_TASK], methods=FEWSHOT_METHODS, train_size=None,  # the protocol sets the train size
                protocols=[ProtocolConfig(name="fewshot", train_fraction=FEWSHOT_FRACTIONS[profile])]),
        })


def mini_ablations(quick: bool = False) -> GridConfig:
    """DynaMer's ablations on one task: which gates (Table 4), gate width (Table 5), which layers are gated
    (Table 6; the tiny experts have 4 blocks, so 4/3/2/1 layers stand for the paper's 12/6/3/1), and the
    skipping router's keep ratio with each skip mode (Table 7; metrics.json has ms_per_batch and
    eval_images_per_second). The default configuration is in every group and runs once."""
    from medvtab.methods.dynamer.config import SKIP_MODES

    budget = BUDGETS[_profile(quick)]

    def ablation(**sweep) -> GroupConfig:
        return GroupConfig(tasks=[ABLATION_TASK], methods=["dynamer"], sweep=sweep)

    return GridConfig(
        name="mini-ablations", seeds=1, train=budget["train"], train_size=budget["train_size"],
        groups={
            "ablation-gates": ablation(gates=["none", "general", "medical", "both"]),
            "ablation-gate-dim": ablation(gate_dim=["width", "width/2", "width/4", "1"]),
            "ablation-layers": ablation(layers=["all", "last:3", "last:2", "last:1"]),
            "ablation-keep-ratio": ablation(keep_ratio=[1.0, 0.5, 0.3, 0.1], skip_mode=list(SKIP_MODES)),
        })


SUITES = {"mini": mini, "mini-ablations": mini_ablations}


def build_suite(name: str, quick: bool = False) -> GridConfig:
    if name not in SUITES:
        raise MedvtabError(f"option '--suite': unknown suite '{name}'; choose from {', '.join(SUITES)}")
    return SUITES[name](quick=quick)
