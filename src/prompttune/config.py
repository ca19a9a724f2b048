"""The YAML config: the single source of truth for a run. Every CLI option has a key here
(``--set section.key=value`` overrides any of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .demonstrations import DemonstrationConfig
from .errors import ConfigError
from .generation import GenerateConfig
from .train import TrainConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: str = Field("smollm2-135m", description="short name (smollm2-135m, minilm-l6, gemma3-270m), hub id, local directory or .gguf file")
    family: Literal["causal-lm", "masked-lm", "seq2seq", "encoder-head"] | None = Field(None, description="override the detected model family")
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
            from .generation import check_generation_template
            from .template import Template

            check_generation_template(Template(self.template), self.target)
        return self


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field("prefix", description="zero-shot, soft-prompt, prefix (the default: measured best, see README), lora, "
                                         "prompt-finetune, head-finetune, rl-prompt")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(_Section):
    train: str = Field("movie-reviews", description="train file (.csv/.tsv/.jsonl) or built-in corpus name")
    dev: str | None = Field(None, description="dev file or built-in; by default sampled from what is left of train")
    test: str | None = Field("movie-reviews", description="test file or built-in (its fixed test split)")
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
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", where=str(p), fix="check the path")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            loc = f"{p}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(p)
            raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where=loc, fix="fix the YAML syntax there") from None
        except UnicodeDecodeError:
            raise ConfigError("not UTF-8", where=str(p), fix="save the config as UTF-8") from None
        if not isinstance(raw, dict):
            raise ConfigError("the config must be a mapping of sections (model, prompt, method, data, train)", where=str(p),
                              fix="see examples/*.yaml")
    return _validate(_apply(raw, overrides), where)


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied (as ``--set`` does)."""
    return _validate(_apply(cfg.model_dump(mode="json"), overrides), "overrides")


def _apply(raw: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} has no '='", where="--set", fix="write --set section.key=value")
        key, _, value = item.partition("=")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        _set_path(raw, key.strip(), parsed, f"--set {item}")
    return raw


def _validate(raw: dict, where: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"{loc}: {err['msg']}")
        raise ConfigError("; ".join(lines), where=where, fix="see `prompttune train --help` and examples/*.yaml for valid keys") from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
