"""Search spaces as data: a YAML file names the trials of a sweep as pipeline-config overrides.

    grid:          every combination is a trial           {train.K: [1, 50], model.imputation: [zero, oracle]}
    references:    extra named trials, one override set each (e.g. complete data: data.missing_rate 0)
    sample:        dimensions drawn per trial              {train.learning_rate: {loguniform: [1e-4, 1e-2]}}
                   (loguniform / uniform: [low, high]; choice: [values])
    num_samples:   repeats of the whole list of trials, each with fresh draws of `sample`
    scheduler:     none | asha (stops trials whose validation bound lags, per epoch)
    asha:          {grace_period, reduction_factor}
    max_concurrent_trials, description

Keys are the pipeline's dotted settings (`section.key`), checked against `PipelineConfig` when
the space is loaded, so a misspelled key fails before any trial starts. Presets live in
tune/spaces/<name>.yaml (paper, wide, tiny).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from missiwae.config import ConfigError, load_config_file, require
from pipelines.config import PipelineConfig

SPACES_DIR = Path(__file__).resolve().parent / "spaces"
SCHEDULERS = ("none", "asha")
SAMPLERS = ("loguniform", "uniform", "choice")
_KEYS = (
    "description",
    "grid",
    "references",
    "sample",
    "num_samples",
    "scheduler",
    "asha",
    "max_concurrent_trials",
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One trial before sampling: a label and the overrides it applies to the base config."""

    label: str
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    grid: dict[str, list[Any]]
    references: dict[str, dict[str, Any]]
    sample: dict[str, dict[str, list[Any]]]
    num_samples: int = 1
    scheduler: str = "none"
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent_trials: int = 2

    def variants(self) -> list[Variant]:
        """The grid's combinations (labelled "K=50 zero", ...) followed by the references."""
        keys = list(self.grid)
        out = [
            Variant(_grid_label(dict(zip(keys, values, strict=True))), dict(zip(keys, values, strict=True)))
            for values in itertools.product(*(self.grid[k] for k in keys))
        ]
        out += [Variant(label, dict(overrides)) for label, overrides in self.references.items()]
        return out

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space: a grid over the variants plus one sampler per `sample` key."""
        from ray import tune

        space: dict[str, Any] = {
            "variant": tune.grid_search([dataclasses.asdict(v) for v in self.variants()])
        }
        for key, spec in self.sample.items():
            (kind, args), *_ = spec.items()
            if kind == "loguniform":
                space[key] = tune.loguniform(float(args[0]), float(args[1]))
            elif kind == "uniform":
                space[key] = tune.uniform(float(args[0]), float(args[1]))
            else:
                space[key] = tune.choice(list(args))
        return space


def _grid_label(values: Mapping[str, Any]) -> str:
    """{"train.K": 50, "model.imputation": "zero"} -> "K=50 zero" (short, for tables and runs)."""
    parts = []
    for key, value in values.items():
        leaf = key.rsplit(".", 1)[-1]
        parts.append(str(value) if leaf == "imputation" else f"{leaf}={value}")
    return " ".join(parts)


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """values["section"]["key"] = value for key "section.key" (sections created as needed)."""
    *sections, leaf = key.split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{key}: '{section}' is not a section")
    target[leaf] = value


def trial_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> PipelineConfig:
    """The base config (a PipelineConfig dict) with dotted overrides applied, validated."""
    values: dict[str, Any] = json.loads(json.dumps(base))
    for key, value in overrides.items():
        set_dotted(values, key, value)
    return PipelineConfig.from_dict(values)


def load_space(space: str | Path) -> SearchSpace:
    """A preset name (tune/spaces/<name>.yaml) or a YAML/JSON path; strict like the configs."""
    path = Path(space)
    if not path.suffix and (SPACES_DIR / f"{space}.yaml").is_file():
        path = SPACES_DIR / f"{space}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise ConfigError(f"search space {space!r} not found (presets: {presets}, or a YAML path)")
    values = load_config_file(path)
    unknown = sorted(set(values) - set(_KEYS))
    require(not unknown, f"{path.name}: unknown key(s) {unknown}; valid keys: {list(_KEYS)}")
    grid = {str(k): list(v) for k, v in (values.get("grid") or {}).items()}
    require(all(grid.values()), f"{path.name}: every grid entry needs at least one value")
    references = {str(k): dict(v) for k, v in (values.get("references") or {}).items()}
    sample = {str(k): dict(v) for k, v in (values.get("sample") or {}).items()}
    for key, spec in sample.items():
        require(
            len(spec) == 1 and next(iter(spec)) in SAMPLERS,
            f"{path.name}: sample.{key} must be one of {list(SAMPLERS)} with its arguments",
        )
        (kind, args), *_ = spec.items()
        require(
            isinstance(args, list) and (len(args) == 2 or kind == "choice") and len(args) >= 1,
            f"{path.name}: sample.{key}.{kind} takes a list ([low, high] or the choices)",
        )
    asha = dict(values.get("asha") or {})
    unknown_asha = sorted(set(asha) - {"grace_period", "reduction_factor"})
    require(not unknown_asha, f"{path.name}: unknown asha key(s) {unknown_asha}")
    result = SearchSpace(
        name=path.stem,
        description=str(values.get("description", "")),
        grid=grid,
        references=references,
        sample=sample,
        num_samples=int(values.get("num_samples", 1)),
        scheduler=str(values.get("scheduler", "none")),
        grace_period=int(asha.get("grace_period", 1)),
        reduction_factor=int(asha.get("reduction_factor", 2)),
        max_concurrent_trials=int(values.get("max_concurrent_trials", 2)),
    )
    require(result.scheduler in SCHEDULERS, f"{path.name}: scheduler must be one of {list(SCHEDULERS)}")
    require(result.num_samples >= 1, f"{path.name}: num_samples must be >= 1")
    require(result.max_concurrent_trials >= 1, f"{path.name}: max_concurrent_trials must be >= 1")
    require(bool(result.variants()), f"{path.name}: no trials (empty grid and no references)")
    return result


def check_space(space: SearchSpace, base: Mapping[str, Any]) -> None:
    """Every variant (with the first value of each sampled key) must give a valid config."""
    probe = {key: _first_value(spec) for key, spec in space.sample.items()}
    for variant in space.variants():
        try:
            trial_config(base, {**variant.overrides, **probe})
        except ConfigError as error:
            raise ConfigError(f"search space {space.name}, trial {variant.label!r}: {error}") from None


def _first_value(spec: Mapping[str, list[Any]]) -> Any:
    (kind, args), *_ = spec.items()
    return float(args[0]) if kind != "choice" else args[0]


__all__ = ["SearchSpace", "Variant", "check_space", "load_space", "set_dotted", "trial_config"]
