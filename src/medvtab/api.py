"""medvtab in Python: the pieces `medvtab train` is made of (backbones, tasks, methods, the training loop, the
metrics, the run files), for notebooks and scripts.

    general, medical = medvtab.load_backbones("tiny-general", "tiny-medical")  # specs, or timm ViT objects
    task = medvtab.load_task("pneumoniamnist", train_size=256)
    model = medvtab.create_model("dynamer", general, medical, num_classes=task.num_classes, keep_ratio=0.5)
    medvtab.fit(model, task.train, task.val, medvtab.TrainConfig(epochs=2))
    print(medvtab.evaluate(model, task.test))
    medvtab.save(model, "runs/notebook")  # config.json + adapter.safetensors, as in a run directory
    model = medvtab.load("runs/notebook")

The same seed, options and data give the same model as `medvtab train`; `medvtab predict --run DIR` reads what
:func:`save` writes (for backbones given as specs).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

import medvtab
from medvtab.atomic import make_output_dir
from medvtab.backbones import Backbone, load_backbone, refuse_download
from medvtab.backbones.timm_any import from_model
from medvtab.data import Split, load_task
from medvtab.engine import rundir
from medvtab.engine.evaluate import evaluate as evaluate_probs
from medvtab.engine.loop import FitResult, TrainConfig, seed_everything
from medvtab.engine.loop import fit as fit_loop
from medvtab.engine.metrics import classification_metrics
from medvtab.engine.run import read_run_config
from medvtab.errors import MedvtabError
from medvtab.methods import AdaptedModel, build_model, make_config, resolve_backbone_specs

__all__ = ["TrainConfig", "create_model", "evaluate", "fit", "load", "load_backbones", "load_task", "save"]

# The spec recorded for a backbone given as a Python object: nothing can rebuild it, so load() needs it again.
OBJECT_SPEC = "object:"


@dataclasses.dataclass
class Recipe:
    """What rebuilds a model (kept on it as ``model.recipe``; :func:`save` writes it to config.json)."""
    method: str
    method_config: dict
    general: str
    medical: str | None
    backbones: list[dict]  # each used backbone's BackboneInfo fields (its input size, for `medvtab predict`)
    num_classes: int
    seed: int
    task_type: str = "multi-class"  # set by fit from the train split
    class_names: list[str] | None = None


def _object_spec(module: nn.Module) -> str:
    return OBJECT_SPEC + (getattr(module, "pretrained_cfg", None) or {}).get("architecture", type(module).__name__)


def _spec_of(backbone) -> str | None:
    if backbone is None or isinstance(backbone, str):
        return backbone
    return backbone.spec if isinstance(backbone, Backbone) else _object_spec(backbone)


def as_backbone(backbone: str | Backbone | nn.Module) -> Backbone:
    """A spec (as ``medvtab train --general``), a Backbone, or a timm ViT object -> a frozen Backbone."""
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, str):
        if backbone.startswith(OBJECT_SPEC):
            raise MedvtabError(f"backbone '{backbone}' was a Python object when the model was saved; pass it "
                               f"again: medvtab.load(DIR, general=..., medical=...)")
        return load_backbone(backbone)
    return from_model(backbone, spec=_object_spec(backbone))


def load_backbones(general, medical=None) -> tuple[Backbone, Backbone | None]:
    """Each a backbone spec (``tiny-general``, ``dinov2-vitb14@FILE``, ``timm:NAME``, ...) or a timm ViT object
    (frozen in place) -> frozen Backbones; ``medical`` None gives None."""
    return as_backbone(general), None if medical is None else as_backbone(medical)


def create_model(method: str, general, medical=None, *, num_classes: int, seed: int = 0,
                 **options) -> AdaptedModel:
    """``method`` (see ``medvtab methods``) with its ``options`` (validated as ``--set`` options are) on the
    backbones it uses: both, or the one its ``backbone`` option picks. Backbones: specs, Backbones or timm ViT
    objects; a spec is loaded only when the method uses it. ``seed`` seeds the global RNGs first, as `medvtab
    train` does, so the initial trainable weights depend on it alone."""
    config = make_config(method, options)
    given = {"general": general, "medical": medical}
    roles = resolve_backbone_specs(method, config, "general", None if medical is None else "medical")
    backbones = [as_backbone(given[role]) for role in roles]
    seed_everything(seed)
    model = build_model(method, config, backbones[0], backbones[1] if len(backbones) > 1 else None, num_classes)
    model.recipe = Recipe(method, config.model_dump(), _spec_of(general), _spec_of(medical),
                          [dataclasses.asdict(b.info) for b in backbones], num_classes, seed)
    return model


def _recipe(model: AdaptedModel) -> Recipe:
    if not isinstance(getattr(model, "recipe", None), Recipe):
        raise MedvtabError("this model has no recipe: build it with medvtab.create_model or medvtab.load")
    return model.recipe


def fit(model: AdaptedModel, train: Split, val: Split, config: TrainConfig | None = None, *,
        on_step=None) -> FitResult:
    """Train ``model``'s trainable parts on ``train`` (the best ``val`` epoch's weights are kept), as `medvtab
    train` does; ``config.lr`` None is the method's default. ``on_step(step, total, loss)`` after each step."""
    recipe = _recipe(model)
    recipe.task_type = "multi-label" if train.targets is not None else "multi-class"
    return fit_loop(model, train, val, config or TrainConfig(), on_step=on_step)


def evaluate(model: AdaptedModel, split: Split, *, batch_size: int = 256) -> dict:
    """Classification metrics on ``split`` (accuracy, balanced accuracy, macro-F1, AUROC, per-class recall; for a
    multi-label task the per-label ones), on the device the model is on."""
    device = next(model.parameters()).device
    result = evaluate_probs(model, split.images, split.y, batch_size, device)
    return classification_metrics(split.y, result.probs)


def save(model: AdaptedModel, run_dir: str | Path, *, class_names: list[str] | None = None) -> Path:
    """Write config.json (what :func:`load` and `medvtab predict --run` need) and adapter.safetensors (the
    trained weights) into ``run_dir``, replacing earlier ones there; ``class_names`` default to the recipe's,
    else "0", "1", ..."""
    recipe, run_dir = _recipe(model), Path(run_dir)
    names = class_names or recipe.class_names or [str(i) for i in range(recipe.num_classes)]
    config = {"medvtab_version": medvtab.__version__, "method": recipe.method,
              "method_config": recipe.method_config, "general": recipe.general, "medical": recipe.medical,
              "backbones": recipe.backbones, "num_classes": recipe.num_classes, "class_names": names,
              "task_type": recipe.task_type, "train": {"seed": recipe.seed}}
    make_output_dir(run_dir)
    rundir.write_json(run_dir / rundir.CONFIG, config)
    rundir.write_tensors(run_dir / rundir.ADAPTER, model.trainable_state_dict())
    return run_dir


def load(run_dir: str | Path, *, general=None, medical=None, allow_download: bool = False) -> AdaptedModel:
    """The model :func:`save` (or `medvtab train`) wrote to ``run_dir``, in eval mode. Its backbones are rebuilt
    from their specs; one that was a Python object must be passed again (``general=``, ``medical=``). A spec whose
    weights would come from a hub is an error unless ``allow_download`` (loading never uses the network unasked)."""
    run_dir = Path(run_dir)
    config, (method, options, general_spec, medical_spec, num_classes, seed) = read_run_config(run_dir)
    general = general_spec if general is None else general
    medical = medical_spec if medical is None else medical
    for spec in (general, medical):
        if isinstance(spec, str) and not allow_download:
            refuse_download(spec)
    model = create_model(method, general, medical, num_classes=num_classes, seed=seed, **options)
    model.load_trainable_state_dict(rundir.read_tensors(run_dir / rundir.ADAPTER), str(run_dir / rundir.ADAPTER))
    model.recipe.task_type = config.get("task_type", "multi-class")
    model.recipe.class_names = config.get("class_names")
    return model.eval()
