"""Sweep specs: a YAML file → a validated `SweepSpec` → one trial config per grid point.

Every mistake is caught here, before Ray starts (Ray and torch take seconds to import; a typo
found an hour into a cluster run costs an hour): each grid value is checked against the
`TrialConfig` field it sets, then every grid point is built as a whole `TrialConfig`, so
cross-field rules (``eval_every`` must divide ``steps_per_task``) fail now too. All problems
are collected, one line each, naming the field path (``grid.units[1]: ...``).

Values are validated strictly (``units: yes`` or ``units: "64"`` is a mistake, not 1 or 64),
and YAML is read with YAML 1.2 floats so that ``lr: 1e-4`` is the number it looks like.
This module imports only pydantic and yaml: no torch, no Ray.
"""
from __future__ import annotations

import itertools
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from trainables.config import TrialConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Trial parameters that may also be given at the top level of a spec (they rarely vary).
TOP_LEVEL_PARAMS = ("dataset", "steps_per_task", "eval_every")
STORAGE_SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "abfs", "abfss")
MAX_TRIALS = 10_000


class SpecError(Exception):
    """A sweep spec is invalid; ``problems`` holds one line per problem, each naming the field."""

    def __init__(self, source: str, problems: list[str], *, separator: str = ": "):
        self.source = source
        self.problems = [f"{source}{separator}{problem}" for problem in problems]
        super().__init__("\n".join(self.problems))


class Resources(BaseModel):
    """Logical resources per trial. ``gpu: 0.25`` packs four trials on one GPU (Ray isolates
    nothing: the four share its memory and compute)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("a trial asking for more than one GPU must ask for a whole number")
        return gpu


Axis = Annotated[list[Any], Field(min_length=1)]


class SweepSpec(BaseModel):
    """The validated spec. ``grid`` axes multiply; ``fixed`` values apply to every trial."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, pattern=NAME_PATTERN)
    description: str | None = None
    storage: str = "results/sweeps"
    dataset: Any = None
    steps_per_task: Any = None
    eval_every: Any = None
    grid: dict[str, Axis] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(3, ge=-1)   # -1: retry forever (Tune's convention)
    checkpoint_keep: int = Field(2, ge=1)
    # Packing: grid points that share parameter shapes (seeds; psp none/binary, or
    # complex/onepower; one width...) train as one batched model in one Tune trial
    # (trainables/packed.py); each stays its own trial in the store. 'auto' picks the pack
    # size per shape (8 on CPU up to width 1024, 16-32 on GPU; it does not count the cluster's
    # free slots, so on a few CPUs it can leave some idle), N packs at most N, 'off' never.
    # Default 'off': a pack changes what Tune schedules (resources, max_concurrent and
    # retries count packs: one failure restarts every member) and on GPU its results agree
    # with unpacked runs only to rounding (bit for bit on CPU), so a spec opts in where many
    # small same-shaped trials would leave a GPU idle.
    pack: Any = "off"
    smoke: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_setting(cls, pack: Any) -> str | int:
        if pack is False:  # YAML reads an unquoted `off` as false
            return "off"
        if pack in ("auto", "off") or (type(pack) is int and pack >= 1):
            return pack
        raise ValueError("must be auto, off or a positive number of trials per pack")

    @field_validator("storage")
    @classmethod
    def _known_scheme(cls, storage: str) -> str:
        if not storage.strip():
            raise ValueError("must be a path or a URI")
        if "://" in storage:
            scheme = storage.split("://", 1)[0]
            if scheme not in STORAGE_SCHEMES:
                raise ValueError(f"scheme {scheme!r} is not supported "
                                 f"(a path, or one of {', '.join(s + '://' for s in STORAGE_SCHEMES)})")
        return storage

    # ---- the effective grid -------------------------------------------------------------
    def axes(self, *, smoke: bool = False) -> tuple[dict[str, list], dict[str, Any]]:
        """(grid axes, fixed values) after the top-level parameters and, if asked, the smoke
        overrides (a list replaces an axis; a scalar pins the parameter)."""
        grid = {key: list(values) for key, values in self.grid.items()}
        fixed = {key: getattr(self, key) for key in TOP_LEVEL_PARAMS if getattr(self, key) is not None}
        fixed.update(self.fixed)
        if smoke:
            for key, value in self.smoke.items():
                grid.pop(key, None)
                fixed.pop(key, None)
                if isinstance(value, list):
                    grid[key] = list(value)
                else:
                    fixed[key] = value
        return grid, fixed

    def trials(self, *, smoke: bool = False) -> list[dict[str, Any]]:
        """Every grid point as a complete, validated config dict (grid order: first axis slowest)."""
        grid, fixed = self.axes(smoke=smoke)
        keys = list(grid)
        return [TrialConfig(**fixed, **dict(zip(keys, values))).model_dump()
                for values in itertools.product(*grid.values())]


# ---- loading and checking ------------------------------------------------------------------
class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: ``1e-4`` is a float, not the string PyYAML makes of it."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; raises SpecError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(source, ["no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [f"cannot read: {exc}"]) from None
    return parse_spec(text, source, default_name=path.stem)


def parse_spec(text: str, source: str = "<spec>", *, default_name: str | None = None) -> SweepSpec:
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise SpecError(source, [_yaml_problem(exc)], separator=":") from None
    if data is None:
        raise SpecError(source, ["the spec is empty"])
    if not isinstance(data, dict):
        raise SpecError(source, [f"the spec must be a mapping of keys, not a {type(data).__name__}"])
    problems: list[str] = []
    try:
        spec: SweepSpec | None = SweepSpec.model_validate(data)
    except ValidationError as exc:
        spec = None
        problems += [_pydantic_problem(error, SweepSpec) for error in exc.errors()]
    problems += [p for p in check_parameters(data) if p not in problems]
    if not problems and spec is not None:
        problems += _check_gpu_options(spec)
        problems += _check_points(spec, smoke=False, label="grid")
        if spec.smoke:
            problems += _check_points(spec, smoke=True, label="smoke")
    if problems:
        raise SpecError(source, problems)
    assert spec is not None
    if spec.name is None and default_name is not None:
        spec = spec.model_copy(update={"name": default_name})
    return spec


def check_parameters(data: dict[str, Any]) -> list[str]:
    """Every trial parameter in the raw spec, value by value, against its TrialConfig field.

    Works on the raw mapping so that a structural mistake elsewhere (an unknown key) does not
    hide a bad value here; sections of the wrong shape are left to the structural check.
    """
    problems: list[str] = []
    sections = {name: data.get(name) if isinstance(data.get(name), dict) else {}
                for name in ("grid", "fixed", "smoke")}
    grid, fixed, smoke = sections["grid"], sections["fixed"], sections["smoke"]
    for key in TOP_LEVEL_PARAMS:
        value = data.get(key)
        if value is not None:
            problems += _check_value(key, value, key)
            for name in ("grid", "fixed"):
                if key in sections[name]:
                    problems.append(f"{name}.{key}: also given at the top level; give it once")
    for key, values in grid.items():
        if _unknown(key, f"grid.{key}", problems) or not isinstance(values, list):
            continue
        for i, value in enumerate(values):
            problems += _check_value(key, value, f"grid.{key}[{i}]")
        if len(values) != len(set(map(repr, values))):
            problems.append(f"grid.{key}: repeated values would run the same trial twice")
    for key, value in fixed.items():
        if _unknown(key, f"fixed.{key}", problems):
            continue
        if key in grid:
            problems.append(f"fixed.{key}: also a grid axis; give it in one place")
        elif isinstance(value, list):
            problems.append(f"fixed.{key}: a list belongs under grid:, fixed values are scalars")
        else:
            problems += _check_value(key, value, f"fixed.{key}")
    for key, value in smoke.items():
        if _unknown(key, f"smoke.{key}", problems):
            continue
        if isinstance(value, list) and not value:
            problems.append(f"smoke.{key}: an axis needs at least one value")
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            where = f"smoke.{key}[{i}]" if isinstance(value, list) else f"smoke.{key}"
            problems += _check_value(key, item, where)
    return problems


def _unknown(key: str, where: str, problems: list[str]) -> bool:
    if key in TrialConfig.model_fields:
        return False
    problems.append(f"{where}: unknown trial parameter (known: {', '.join(TrialConfig.model_fields)})")
    return True


@lru_cache(maxsize=None)
def _field_adapter(key: str) -> TypeAdapter:
    field = TrialConfig.model_fields[key]
    return TypeAdapter(Annotated[field.annotation, field])


def _check_value(key: str, value: Any, where: str) -> list[str]:
    try:
        _field_adapter(key).validate_python(value, strict=True)
    except ValidationError as exc:
        return [f"{where}: {error['msg']} (got {value!r})" for error in exc.errors()]
    return []


def _check_gpu_options(spec: SweepSpec) -> list[str]:
    """Options only a GPU trial can honour, in a spec whose trials get no GPU (they would
    fail on their workers, once per retry, instead of here)."""
    if spec.resources.gpu > 0:
        return []
    if spec.fixed.get("cuda_graph") is True:
        return ["fixed.cuda_graph: needs GPU trials, but resources.gpu is 0"]
    if True in spec.grid.get("cuda_graph", []):
        return ["grid.cuda_graph: needs GPU trials, but resources.gpu is 0"]
    return []


def _check_points(spec: SweepSpec, smoke: bool, label: str) -> list[str]:
    grid, fixed = spec.axes(smoke=smoke)
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_TRIALS:
        return [f"{label}: {count} trials; a sweep holds at most {MAX_TRIALS}"]
    seen: dict[str, str] = {}
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        try:
            TrialConfig(**fixed, **point)
        except ValidationError as exc:
            for error in exc.errors():
                message = _pydantic_problem(error, TrialConfig)
                where = ", ".join(f"{k}={v}" for k, v in point.items())
                seen.setdefault(message, f"{label} point ({where}): {message}" if where
                                else f"{label}: {message}")
    return list(seen.values())


def _pydantic_problem(error: dict, model: type[BaseModel]) -> str:
    location = format_location(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        parent = _model_at(model, error["loc"][:-1])
        known = ", ".join(parent.model_fields) if parent is not None else ""
        message = f"unknown key (expected one of: {known})" if known else "unknown key"
    elif "input" in error and error["type"] not in ("missing",) and location:
        message = f"{message} (got {error['input']!r})"
    return f"{location}: {message}" if location else message


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def format_location(loc: tuple) -> str:
    """('grid', 'units', 0) → 'grid.units[0]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
    return f" invalid YAML: {problem}"


def check_name(name: str) -> str:
    """A sweep name becomes a directory: letters, digits, '_', '.', '-' only."""
    if not re.match(NAME_PATTERN, name):
        raise SpecError("--name", [f"{name!r}: use letters, digits, '_', '.', '-' (at most 100)"])
    return name
