"""Every section's schema, importable without torch: training, decoding, demonstrations and each method's options.

``config`` builds the run's YAML on these; the modules that act on a section (``train``, ``generation``,
``demonstrations``, ``methods/``) take them from here. ``METHOD_OPTIONS`` names every method and its options class:
``MethodSpec`` is their typed union (tagged by ``name``), which the config validates and documents.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

PField = Field

# The model families (``backbone.families`` implements one class per name; a test holds the two equal).
FAMILIES = ("causal-lm", "masked-lm", "seq2seq", "encoder-head", "speech-seq2seq")
Family = Literal["causal-lm", "masked-lm", "seq2seq", "encoder-head"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float | None = Field(None, gt=0, description="learning rate (default: the method's, e.g. 3e-3 soft-prompt, 1e-5 prompt-finetune)")
    batch_size: int = Field(8, ge=1, description="examples per optimizer step per process (before accumulation)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: from epochs, else from the data size: "
                                                           "about 30 epochs within 60-400 steps, and at least 3 epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the training data (max_steps, when set, wins, as in "
                                                         "transformers' Trainer)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of steps of linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    eval_every: int | None = Field(None, ge=1, description="optimizer steps between dev evaluations (default: one epoch, at least 10)")
    patience: int = Field(6, ge=1, description="stop after this many dev evaluations without improvement")
    metric: Literal["accuracy", "macro_f1", "loss"] = Field(
        "loss", description="dev metric for early stopping and best-state restore (accuracy and macro_f1 ties are broken by dev "
                            "loss). Default loss: with 16 dev examples per class accuracy moves in steps of 3 points and picks noise")
    refit: bool | Literal["auto"] = Field(
        "auto", description="after dev has chosen the best step, train again from the initial prompt on train + dev for as "
                            "many epochs and keep the final state (every labelled example trains; costs a second pass). auto: "
                            "on for few-shot runs (at most 1,000 train rows) outside FSDP / DeepSpeed; true / false force it")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for initialisation, data order and dropout")
    eval_batch_size: int = Field(16, ge=1, description="batch size for evaluation")
    dev_max_examples: int | None = Field(512, ge=1, description="dev evaluations during training score a fixed random sample "
                                                               "of at most this many dev rows; the kept state is then scored "
                                                               "on the whole dev set (null: the whole set every time)")
    checkpoint_dir: str | None = Field(None, description="where the resumable checkpoint is written (None = no checkpoint)")
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints (default: eval_every)")
    resume: bool = Field(False, description="continue from the checkpoint in checkpoint_dir when there is one")
    log_with: list[str] = Field(default_factory=list, description="accelerate trackers, e.g. [tensorboard] or [wandb]")
    logging_dir: str | None = Field(None, description="directory for tracker logs")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate mixed precision")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory (slower steps)")
    progress: bool = Field(True, description="show a progress bar")
    stop_after: int | None = Field(None, ge=1, description="halt after this many steps as if interrupted (for resume tests)")



class GenerateConfig(BaseModel):
    """Decoding options (config section ``generation``)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = PField(32, ge=1, le=4096, description="most tokens generated per example")
    num_beams: int = PField(1, ge=1, le=64, description="beam search width (1 = greedy or sampling)")
    do_sample: bool = PField(False, description="sample instead of greedy / beam search")
    temperature: float = PField(1.0, gt=0, description="sampling temperature")
    top_k: int = PField(50, ge=0, description="sampling: keep the k most likely tokens (0 = all)")
    top_p: float = PField(1.0, gt=0, le=1, description="sampling: nucleus probability mass")
    repetition_penalty: float = PField(1.0, gt=0, description="HF repetition penalty (1 = none)")
    stop: list[str] = PField(default_factory=list, description="stop strings: generation ends at the first one, which is cut off")
    seed: int = PField(0, ge=-(2**63), le=2**64 - 1, description="seed for sampling (a 64-bit integer, as torch takes)")
    batch_size: int = PField(8, ge=1, description="examples per generate() call (left-padded)")
    use_cache: bool = PField(True, description="reuse the keys/values of the prompt and earlier tokens (False recomputes "
                                               "everything each step; only for checking)")
    language: str = PField("auto", description="target language for the metrics: zh scores Chinese by characters "
                                               "(sacreBLEU tokenize=zh); auto detects Chinese references")



# The decoding settings one request may set (the rest: batch size, cache, metric language, belong to the server), and
# the server's tighter caps on them (one request must not hold the worker for long).
REQUEST_DECODING = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed")
SERVER_DECODING_LIMITS = {"max_new_tokens": 1024, "num_beams": 16, "stop": 16}


def decoding_overrides(base: type[BaseModel], limits: dict[str, int]) -> type[BaseModel]:
    """A model (on ``base``) with every request decoding setting optional (None keeps the artifact's), with
    :class:`GenerateConfig`'s own constraints and descriptions, and ``limits`` as upper bounds (a list: its length)."""
    import annotated_types as at

    fields = {}
    for key in REQUEST_DECODING:
        f = GenerateConfig.model_fields[key]
        meta = [m for m in f.metadata if not (key in limits and isinstance(m, at.Le))]
        if key in limits:
            meta.append(at.MaxLen(limits[key]) if get_origin(f.annotation) is list else at.Le(limits[key]))
        ann = Annotated[(f.annotation, *meta)] if meta else f.annotation
        fields[key] = (ann | None, Field(None, description=f.description))
    return create_model("DecodingOverrides", __base__=base, **fields)


class DemonstrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = PField(1, ge=1, le=16, description="demonstrations per class put in front of each input")
    select: Literal["random", "similar"] = PField(
        "random", description="random: drawn with a seed fixed per query; similar: highest TF-IDF cosine to the query")
    template: str | None = PField(None, description="how one demonstration is written ({mask} = its label word); "
                                                    "default: the prompt's template without its soft tokens")
    separator: str = PField("\n\n", description="text between demonstrations and before the query")
    seed: int = PField(0, description="seed of the random draw")
    min_field_tokens: int = PField(4, ge=1, description="drop a demonstration rather than cut its input below this many tokens")



# ---- method options (one class per method; the method file takes it as ``Options``) ----
class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init: Literal["auto", "text", "labels", "vocab", "random"] = Field(
        "auto", description="how soft tokens start: from their {soft:words}, from the label words, from sampled vocabulary "
                            "rows, or random. auto = the words in the template where given, else the label words")
    encoder: Literal["none", "mlp", "lstm"] = Field(
        "none", description="P-tuning reparameterisation of the soft tokens (trained and saved with the prompt)")
    encoder_hidden: int = Field(0, ge=0, description="hidden size of the prompt encoder (0 = the model's hidden size)")



class SoftPromptOptions(MethodOptions):
    placement: Literal["template", "prefix"] = Field(
        "prefix", description="when the template has no {soft}: tune its own words as soft tokens (template) or put "
                                "num_tokens new soft tokens in front (prefix)")
    num_tokens: int = Field(8, ge=1, le=4096, description="soft tokens put in front with placement: prefix")



class PrefixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_tokens: int | None = Field(None, ge=1, le=4096, description="prefix length (default: the init text's length, or 10)")
    init: Literal["auto", "text", "vocab", "random"] = Field(
        "auto", description="text = the keys/values the model computes for init_text; vocab = for sampled vocabulary tokens; "
                            "random = Gaussian noise scaled like real keys/values; auto = text")
    init_text: str | None = Field(None, description="text to initialise from (default: a line naming the label words)")
    reparameterize: Literal["none", "mlp"] = Field("none", description="train the prefix through an MLP (folded away when saved)")
    encoder_hidden: int = Field(512, ge=1, description="hidden size of the reparameterisation MLP")
    shared: bool = Field(False, description="one prefix shared by all layers instead of one per layer")
    folded: Literal["", "mlp"] = Field("", description="written by prompttune: the saved prefix was trained through this MLP")



class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="rank of the update")
    alpha: float = Field(16, gt=0, description="scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | str | None = Field(None, description="module names to adapt (default: peft's choice for the model type, "
                                                                      "e.g. q_proj and v_proj); a string is a regular expression the "
                                                                      "whole module name must match, as in peft, e.g. "
                                                                      "'.*decoder.*\\.(q_proj|v_proj)'")

    @field_validator("target_modules")
    @classmethod
    def _regex_compiles(cls, v):
        if isinstance(v, str):
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression ({e}); write a list of module names, or a valid pattern") from None
        return v



class RLPromptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_tokens: int = Field(5, ge=1, le=64, description="prompt slots put in front when the template has no {soft} placeholder")
    candidates: int = Field(1000, ge=2, description="size of the restricted vocabulary: the first N whole-word tokens")
    samples: int = Field(8, ge=2, description="prompts sampled per step (each scored on the step's batch)")
    reward: Literal["margin", "accuracy"] = Field("margin", description="margin: mean log p(gold) - max log p(other); accuracy")
    entropy: float = Field(0.01, ge=0, description="entropy bonus weight (keeps the policy exploring)")
    baseline_decay: float = Field(0.9, ge=0, lt=1, description="decay of the moving-average reward baseline")
    prompt_text: str | None = Field(None, description="written by training: the template with the learnt tokens (for reading)")



# Every method by name, with its options. ``methods/`` registers the implementation of each under the same name
# (a test holds the two registries equal), so a config is checked here, before torch or any model loads.
METHOD_OPTIONS: dict[str, type[BaseModel]] = {
    "zero-shot": MethodOptions,
    "soft-prompt": SoftPromptOptions,
    "prefix": PrefixOptions,
    "lora": LoraOptions,
    "prompt-finetune": MethodOptions,
    "head-finetune": MethodOptions,
    "rl-prompt": RLPromptOptions,
}
# The one default method (Python API, config and CLI alike): the best on held-out domains, see README.
DEFAULT_METHOD = "prefix"


def _tagged(name: str, options: type[BaseModel]) -> type[BaseModel]:
    return create_model(f"{options.__name__}_{name.replace('-', '_')}", __base__=options,
                        name=(Literal[name], Field(description="the method")))


# The typed union of every method's options, tagged by ``name`` (what the config's ``method`` section validates as).
MethodSpec = Annotated[Union[tuple(_tagged(n, o) for n, o in METHOD_OPTIONS.items())], Field(discriminator="name")]
