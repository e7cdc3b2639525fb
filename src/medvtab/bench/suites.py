"""The built-in grids (``medvtab bench --suite NAME``), shipped as YAML in ``medvtab/assets/suites/``: ``NAME.yaml``
is the default profile, a grid file like any other (what a user copies to make their own); ``NAME.quick.yaml``
holds the fields the quick profile (``--quick``) replaces. Both suites run on the bundled tiny experts and
bundled data (no data root); their contents and measured budgets are described in the files."""
from __future__ import annotations

from importlib import resources

from medvtab.bench.grid import GridConfig, parse_grid
from medvtab.errors import MedvtabError
from medvtab.yaml_files import read_yaml

SUITES_DIR = resources.files("medvtab").joinpath("assets", "suites")
QUICK = ".quick.yaml"
SUITES = tuple(sorted(p.name.removesuffix(".yaml") for p in SUITES_DIR.iterdir()
                      if p.name.endswith(".yaml") and not p.name.endswith(QUICK)))


def _read(name: str) -> dict:
    return read_yaml(SUITES_DIR.joinpath(name))


def with_quick_profile(grid: dict, quick: dict) -> dict:
    """``grid`` with the quick profile's fields in its place: each top-level field whole, and under ``groups``
    each named group's fields one by one."""
    out = {**grid, **{k: v for k, v in quick.items() if k != "groups"}}
    if "groups" in quick:
        out["groups"] = {g: {**fields, **quick["groups"].get(g, {})} for g, fields in grid["groups"].items()}
    return out


def build_suite(name: str, quick: bool = False) -> GridConfig:
    if name not in SUITES:
        raise MedvtabError(f"option '--suite': unknown suite '{name}'; choose from {', '.join(SUITES)}")
    grid = _read(f"{name}.yaml")
    if quick:
        grid = with_quick_profile(grid, _read(name + QUICK))
    return parse_grid(grid, f"suite '{name}'")
