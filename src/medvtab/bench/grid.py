"""Benchmark grids: a validated description (YAML or Python) and its expansion into :class:`RunSpec` cells.

A grid is a set of named groups (one table or figure each: ``main``, ``patient-ood``, ``fewshot``,
``ablation-*``); each group is the product tasks x protocols x methods x option variants x seeds. Every field
set at the top level is the default of every group; a group overrides it (``train`` and ``options`` merge key by
key). Without ``groups`` the top level is the one group ``main``::

    name: my-grid                 # recorded in bench.json
    device: cuda                  # default of --device (cpu when absent)
    backbones: {general: dinov2-vitb14@/models/dinov2.pth, medical: lvmmed-vitb@/models/lvmmed_vit.pth}
    seeds: 3                      # 3 -> seeds 0, 1, 2; or a list [0, 5]
    train: {epochs: 20, batch_size: 64, patience: 5}   # TrainConfig fields (not seed, device)
    train_size: null              # subsample train (standard and patient-ood protocols)
    dedupe: false                 # true: drop evaluation images identical to training ones (train --dedupe)
    groups:
      main:
        tasks: [retinamnist, /data/prepared/aptos]
        methods: all              # or a list of names
        options: {dynamer: {keep_ratio: 0.5}}          # per-method option overrides
      ablation-keep-ratio:
        tasks: [retinamnist]
        methods: [dynamer]
        sweep: {keep_ratio: [1.0, 0.5], skip_mode: [adapter, block]}   # cartesian product of options
      scaling-vpt-deep:           # a scaling sweep (the report's "Scaling of tunable parameters" section)
        tasks: [retinamnist, pneumoniamnist]
        methods: [vpt-deep]
        sweep: {num_prompts: [1, 10, 50]}
        tune_each_point: true     # every point its own study (default: a sweep's points share one)
      fewshot:
        tasks: [retinamnist]
        methods: [linear, dynamer]
        protocols: [{name: fewshot, train_fraction: [0.1, 0.3, 1.0]}]
      patient-ood:
        tasks: [kermany-cxr]
        methods: [linear, dynamer]
        protocols: [{name: patient-ood, seen: 100, unseen: 60}, {name: patient-ood, seen: 60, unseen: 100}]
    tune:                         # optional: every (task, method) tuned on validation (medvtab.bench.tune)
      space: {lr: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}    # TrainConfig fields or method options -> values
      seed: 0                     # the tuning trials' seed
      pruner: median              # or none

Expansion normalises every cell (method options and training overrides are validated and those equal to their
defaults dropped, so ``options`` holds what differs from the method's defaults; the protocol gets its canonical
name), so two ways of writing the same run give the same run_id, and specs identical but for their group share
one run (the ablations' default configuration is the main table's DynaMer run when the budgets agree).
Unknown keys, unknown methods, bad option values and bad protocol options are :class:`MedvtabError` one-liners
naming the field.
"""
from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medvtab.bench.store import RunSpec
from medvtab.data.protocols import check_protocol
from medvtab.engine.loop import TrainConfig
from medvtab.errors import MedvtabError
from medvtab.methods import make_config, method_names
from medvtab.yaml_files import read_yaml

GROUP_ORDER = ("main", "patient-ood", "fewshot", "ablation-gates", "ablation-gate-dim",
               "ablation-gated-layers", "ablation-keep-ratio", "ablation-adapter-layers")
EXECUTION_KEYS = ("seed", "device")  # TrainConfig fields that are not part of a grid's `train`


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Backbones(_Strict):
    general: str = "tiny-general"
    medical: str = "tiny-medical"


class ProtocolConfig(_Strict):
    """One protocol setting; a list of ``train_fraction`` or ``shots`` values expands to one setting each."""
    name: str = "standard"
    train_fraction: float | list[float] | None = None
    shots: int | list[int] | None = None
    seen: int | None = None
    unseen: int | None = None

    def expand(self) -> list[dict]:
        fractions = self.train_fraction if isinstance(self.train_fraction, list) else [self.train_fraction]
        shots = self.shots if isinstance(self.shots, list) else [self.shots]
        return [{"name": self.name, "train_fraction": f, "shots": s, "seen": self.seen, "unseen": self.unseen}
                for f in fractions for s in shots]


class GroupConfig(_Strict):
    """The fields of one group; any left out come from the grid's top level."""
    tasks: list[str] | None = None
    methods: Literal["all"] | list[str] | None = None
    seeds: int | list[int] | None = None
    backbones: Backbones | None = None
    protocols: list[ProtocolConfig] | None = None
    train: dict[str, Any] | None = None
    train_size: int | None = Field(None, ge=1)
    options: dict[str, dict[str, Any]] | None = None
    sweep: dict[str, list[Any]] | None = None
    tune_each_point: bool | None = None
    dedupe: bool | None = None

    @field_validator("methods", "tasks", mode="before")
    @classmethod
    def _comma_list(cls, value):
        if isinstance(value, str) and value != "all":  # "linear, dynamer" as a list
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("a number of seeds must be at least 1 (or give a list of seeds)")
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("a list of seeds must be non-empty and without repeats")
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value):
        for key, values in (value or {}).items():
            if not values:
                raise ValueError(f"sweep '{key}' has no values")
        return value


class TuneConfig(_Strict):
    """The grid's ``tune`` section: a grid search over ``space`` on the validation split for every (task, method)
    (:mod:`medvtab.bench.tune`). Keys of ``space``: TrainConfig fields or method options; a method without an
    option of the space is tuned over the rest."""
    space: dict[str, list[Any]]
    seed: int = 0
    pruner: Literal["median", "none"] = "median"

    @field_validator("space")
    @classmethod
    def _space(cls, value):
        if not value:
            raise ValueError("the search space is empty")
        options = {f for m in method_names() for f in type(make_config(m, {})).model_fields}
        for key, values in value.items():
            if key in EXECUTION_KEYS or (key not in TrainConfig.model_fields and key not in options):
                raise ValueError(f"'{key}' is neither a training field nor a method option")
            if not values or len(set(map(repr, values))) != len(values):
                raise ValueError(f"'{key}' needs a non-empty list of distinct values")
        return value


class GridConfig(GroupConfig):
    """A whole grid: top-level defaults plus named groups (see the module docstring)."""
    name: str = "grid"
    device: str | None = None
    data_root: str | None = None
    groups: dict[str, GroupConfig] | None = None
    tune: TuneConfig | None = None


# --- loading and validation -------------------------------------------------------------------------------

_UNION_HELP = {"seeds": "a number of seeds (1 or more: seeds 0..N-1) or a list of seeds",
               "methods": "'all' or a list of method names", "train_fraction": "a fraction or a list of fractions",
               "shots": "a number of shots or a list of them"}
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|dict|list|[\w-]+\[.*\])$")


def _pydantic_error(err: ValidationError, where: str) -> MedvtabError:
    """One line naming the field (as a dotted path in the file) and what is wrong with it."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    loc = [p for p in loc if not _UNION_TAG.match(p)]  # pydantic names a union's member in the path
    field = ".".join(loc) or "(top level)"
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        return MedvtabError(f"{where}: unknown key '{field}'")
    if loc and loc[0] in _UNION_HELP and len(first["loc"]) > len(loc):  # a union field: say what it takes
        return MedvtabError(f"{where}: field '{field}': expected {_UNION_HELP[loc[0]]} (got {first.get('input')!r})")
    if kind == "literal_error":
        return MedvtabError(f"{where}: field '{field}': {msg}")
    return MedvtabError(f"{where}: field '{field}': {msg} (got {first.get('input')!r})")


def parse_grid(data: Any, where: str = "grid") -> GridConfig:
    if not isinstance(data, dict):
        raise MedvtabError(f"{where}: expected a mapping of grid fields at the top level, got "
                           f"{type(data).__name__}")
    try:
        return GridConfig(**data)
    except ValidationError as err:
        raise _pydantic_error(err, where) from None


def load_grid_file(path: Path) -> GridConfig:
    """Read and validate a YAML grid (:func:`medvtab.yaml_files.read_yaml`: no code, no alias bombs)."""
    data = read_yaml(path, option="--config")
    if data is None:
        raise MedvtabError(f"{path}: empty grid file")
    return parse_grid(data, str(path))


# --- expansion --------------------------------------------------------------------------------------------

_INHERITED = ("tasks", "methods", "seeds", "backbones", "protocols", "train", "train_size", "options", "sweep",
              "tune_each_point", "dedupe")


def _merged(grid: GridConfig, group: GroupConfig) -> dict:
    out = {}
    for key in _INHERITED:
        top, own = getattr(grid, key), getattr(group, key)
        if key in ("train", "options") and key in group.model_fields_set and top:
            if key == "train":
                out[key] = {**top, **(own or {})}
            else:
                own = own or {}
                out[key] = {m: {**top.get(m, {}), **own.get(m, {})} for m in dict.fromkeys([*top, *own])}
        else:
            out[key] = own if key in group.model_fields_set else top
    return out


def train_overrides(train: dict, where: str) -> dict:
    """The training overrides, validated by TrainConfig, without those equal to its defaults."""
    for key in EXECUTION_KEYS:
        if key in train:
            how = "the grid's 'seeds'" if key == "seed" else "the grid's 'device' or --device"
            raise MedvtabError(f"{where}: field 'train.{key}': not a training override; use {how}")
    try:
        cfg = TrainConfig(**train)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(k for k in TrainConfig.model_fields if k not in EXECUTION_KEYS)
            raise MedvtabError(f"{where}: unknown key 'train.{field}'; expected any of: {allowed}") from None
        raise MedvtabError(f"{where}: field 'train.{field}': {first['msg']} (got {first.get('input')!r})") from None
    return cfg.model_dump(exclude=set(EXECUTION_KEYS), exclude_defaults=True)


def _protocol(p: dict, train_size: int | None, where: str) -> dict:
    try:
        chosen = check_protocol(p["name"], train_fraction=p["train_fraction"], shots=p["shots"], seen=p["seen"],
                                unseen=p["unseen"], train_size=train_size)
    except MedvtabError as err:
        raise MedvtabError(f"{where}: field 'protocols': {err}") from None
    return {"protocol": chosen.name, "train_fraction": chosen.train_fraction, "shots": chosen.shots,
            "seen": chosen.seen, "unseen": chosen.unseen}


def _variants(method: str, fixed: dict, sweep: dict | None, where: str) -> list[dict]:
    """The method's options for each point of the sweep, validated by the method's config, without those
    equal to its defaults."""
    keys = list(sweep or {})
    points = [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))] if keys else [{}]
    out = []
    for point in points:
        try:
            out.append(make_config(method, {**fixed, **point}).model_dump(exclude_defaults=True))
        except MedvtabError as err:
            raise MedvtabError(f"{where}: {err}") from None
    return out


def expand_grid(grid: GridConfig, *, methods: list[str] | None = None, seeds: int | list[int] | None = None,
                where: str | None = None, allow_empty: bool = False) -> list[RunSpec]:
    """Every cell of the grid, group by group, as normalised :class:`RunSpec` (duplicates within a group
    dropped). ``methods`` keeps only those methods (a group left without any is dropped); ``seeds``
    replaces every group's seeds."""
    where = where or f"grid '{grid.name}'"
    known = method_names()
    if methods is not None:
        bad = [m for m in methods if m not in known]
        if bad:
            raise MedvtabError(f"option '--methods': unknown method '{bad[0]}'; expected one of: {', '.join(known)}")
    groups = grid.groups if grid.groups is not None else {"main": GroupConfig()}
    if not groups:
        raise MedvtabError(f"{where}: field 'groups': no groups")
    specs: list[RunSpec] = []
    for group_name, group in groups.items():
        at = f"{where}, group '{group_name}'" if grid.groups is not None else where
        g = _merged(grid, group)
        if not g["tasks"]:
            raise MedvtabError(f"{at}: field 'tasks': no tasks given")
        group_methods = known if g["methods"] in (None, "all") else g["methods"]
        for m in group_methods:
            if m not in known:
                raise MedvtabError(f"{at}: field 'methods': unknown method '{m}'; expected 'all' or any of: "
                                   f"{', '.join(known)}")
        for m in g["options"] or {}:
            if m not in known:
                raise MedvtabError(f"{at}: field 'options': unknown method '{m}'; expected any of: "
                                   f"{', '.join(known)}")
        if methods is not None:
            group_methods = [m for m in group_methods if m in methods]
            if not group_methods:
                continue
        n_seeds = seeds if seeds is not None else (g["seeds"] if g["seeds"] is not None else 1)
        seed_list = list(range(n_seeds)) if isinstance(n_seeds, int) else list(n_seeds)
        backbones = g["backbones"] or Backbones()
        train = train_overrides(g["train"] or {}, at)
        protocols = [_protocol(p, g["train_size"], at)
                     for entry in (g["protocols"] or [ProtocolConfig()]) for p in entry.expand()]
        variants = {m: _variants(m, (g["options"] or {}).get(m, {}), g["sweep"], at) for m in group_methods}
        seen_keys = set()
        for seed, task, protocol, method in itertools.product(seed_list, g["tasks"], protocols, group_methods):
            for options in variants[method]:
                spec = RunSpec(group=group_name, task=task, method=method, seed=seed, general=backbones.general,
                               medical=backbones.medical, train_size=g["train_size"], options=options,
                               train=train, dedupe=bool(g["dedupe"]), **protocol)
                if spec.key() not in seen_keys:
                    seen_keys.add(spec.key())
                    specs.append(spec)
    if not specs and not allow_empty:
        raise MedvtabError(f"{where}: the grid is empty"
                           + (f" (no group has any of the methods {', '.join(methods)})" if methods else ""))
    return specs


def swept_options(grid: GridConfig) -> dict[str, tuple[str, ...]]:
    """group -> the method options its sweep varies (not part of a tuning key: a sweep's points share a study),
    none for a group with ``tune_each_point`` (each point is tuned as a cell of the main table is)."""
    groups = grid.groups if grid.groups is not None else {"main": GroupConfig()}
    merged = {name: _merged(grid, group) for name, group in groups.items()}
    return {name: () if g["tune_each_point"] else tuple(g["sweep"] or ()) for name, g in merged.items()}


def unique_runs(specs: list[RunSpec]) -> list[RunSpec]:
    """One spec per run_id (the first), in grid order: the runs to execute."""
    seen, out = set(), []
    for spec in specs:
        if spec.run_id() not in seen:
            seen.add(spec.run_id())
            out.append(spec)
    return out


def execution_order(specs: list[RunSpec]) -> list[RunSpec]:
    """Seed 0 of every group first, then seed 1, ...: an interrupted multi-seed grid has whole tables."""
    return sorted(specs, key=lambda s: s.seed)  # stable: the grid's order within a seed


@functools.lru_cache(maxsize=None)
def _default_options(method: str) -> dict:
    return make_config(method, {}).model_dump()


def describe(spec: RunSpec) -> str:
    """A short human label: task, method, seed, protocol and the options that differ from the defaults."""
    parts = [spec.task if len(spec.task) <= 32 else Path(spec.task).name, spec.method, f"s{spec.seed}"]
    if spec.protocol != "standard":
        extra = {"fewshot": f"f={spec.train_fraction}" if spec.train_fraction is not None else f"k={spec.shots}",
                 "patient-ood": f"{spec.seen}/{spec.unseen}"}.get(spec.protocol, "")
        parts.append(f"{spec.protocol}{' ' + extra if extra else ''}")
    try:
        defaults = _default_options(spec.method)
    except MedvtabError:
        defaults = {}
    changed = [f"{k}={v}" for k, v in spec.options.items() if defaults.get(k, object()) != v]
    return " ".join(parts + changed)
