"""Artifacts: ``prompt.json`` (template, verbalizer, method, backbone id + fingerprint, versions) and
``prompt.safetensors`` (only the trained prompt parameters), with a model card ``README.md`` (:mod:`prompttune.card`)
for people and the Hub. Methods that train the backbone also save it with ``save_pretrained`` into ``backbone/``.
Never pickle. The whole directory is built beside its target and swapped in as one step
(:func:`prompttune.files.staged_directory`): a reader sees the old artifact or the new one.

Where an artifact is read, a Hub id ``user/name`` (or ``user/name@revision``) that is not a local directory names
the Hub repository of that id (:mod:`prompttune.hub`): its snapshot is downloaded into the Hugging Face cache, or
found there, and then checked and loaded as a local artifact is.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from .card import CARD_NAME, is_card, write_card
from .errors import ArtifactError, validation_summary
from .files import atomic_write_text, is_ours, staged_directory

FORMAT = "prompttune-artifact"
FORMAT_VERSION = 1
PROMPT_JSON = "prompt.json"
PROMPT_TENSORS = "prompt.safetensors"
BACKBONE_DIR = "backbone"
MODEL_CARD = CARD_NAME  # README.md: written with every artifact, read by people and the Hub, never by loading


REWRITE = "re-run training to rewrite the artifact (or restore prompt.json as prompttune wrote it)"


def _shown(value) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def field_error(meta: dict, key: str, want: str, where, fix: str = REWRITE) -> ArtifactError:
    """The error for a prompt.json field that is not what loading needs (``want``)."""
    got = _shown(meta.get(key)) if "." not in key else None
    return ArtifactError(f"{PROMPT_JSON} field {key!r} must be {want}" + (f", got {got}" if got is not None else ""),
                         where=str(where), fix=fix)


def validate_meta(meta: dict, where) -> dict:
    """Check the fields of a prompt.json that loading reads (types, ranges, what each task needs), so a damaged or
    hand-edited artifact fails here with the field named, not later inside torch or transformers."""
    from .backbone import FAMILIES
    from .tasks import TASKS

    def bad(key: str, want: str, fix: str = REWRITE):
        return field_error(meta, key, want, where, fix)

    version = meta.get("format_version", 0)
    if not _is_int(version) or version < 0:
        raise bad("format_version", f"a whole number such as {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"artifact format {version} is newer than this prompttune understands ({FORMAT_VERSION})",
                            where=str(where), fix="upgrade prompttune")
    for key in ("template", "verbalizer", "method", "backbone"):
        if key not in meta:
            raise ArtifactError(f"{PROMPT_JSON} lacks {key!r}", where=str(where), fix=REWRITE)
    task = meta.get("task", "classification")
    if not isinstance(task, str) or task not in TASKS:
        raise bad("task", f"one of {', '.join(TASKS)}",
                  fix="upgrade prompttune if a newer version wrote this artifact; otherwise " + REWRITE)
    if not isinstance(meta["template"], str) or not meta["template"].strip():
        raise bad("template", "the template text (a non-empty string)")
    method = meta["method"]
    if not isinstance(method, dict) or not isinstance(method.get("name"), str) or not method["name"]:
        raise bad("method", 'an object with the method\'s "name" and options, e.g. {"name": "soft-prompt", "num_tokens": 8}')
    bb = meta["backbone"]
    if not isinstance(bb, dict) or not isinstance(bb.get("name"), str) or not bb["name"].strip():
        raise bad("backbone", 'an object naming the model, e.g. {"name": "smollm2-135m", "family": "causal-lm"}')
    checks = {"family": (lambda v: v in FAMILIES, f"one of {', '.join(FAMILIES)}"),
              "dtype": (lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
              "revision": (lambda v: isinstance(v, str), "a hub revision (a string)"),
              "fingerprint": (lambda v: isinstance(v, str), "the 16-character fingerprint prompttune wrote")}
    for key, (ok, want) in checks.items():
        if bb.get(key) is not None and not ok(bb[key]):
            raise ArtifactError(f"{PROMPT_JSON} field 'backbone.{key}' must be {want}, got {_shown(bb[key])}", where=str(where),
                                fix=REWRITE)
    trained = meta.get("trained_backbone")
    if trained is not None and (not isinstance(trained, str) or not trained.strip()):
        raise bad("trained_backbone", f"null or the name of the directory holding the fine-tuned backbone ({BACKBONE_DIR!r})")
    for key, low in (("max_length", 1), ("max_target_length", 1)):
        if key in meta and (not _is_int(meta[key]) or meta[key] < low):
            raise bad(key, f"a whole number >= {low}")
    if meta.get("padding_side", "right") not in ("left", "right"):
        raise bad("padding_side", '"left" or "right"')
    TASKS[task].check_meta(meta, where)
    demos = meta.get("demonstrations")
    if demos is not None:
        pool = demos.get("pool") if isinstance(demos, dict) else None
        if not isinstance(pool, list) or not pool or not all(
                isinstance(r, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in r.items()) for r in pool):
            raise bad("demonstrations", 'null or {"pool": [labelled rows of text fields], "config": {...}}')
        if demos.get("config") is not None:
            from .schemas import DemonstrationConfig

            try:
                DemonstrationConfig.model_validate(demos["config"])
            except ValidationError as e:
                raise ArtifactError(f"{PROMPT_JSON} field 'demonstrations.config' is invalid: {validation_summary(e)}",
                                    where=str(where), fix=REWRITE) from None
    if meta.get("metrics") is not None and not isinstance(meta["metrics"], dict):
        raise bad("metrics", "null or an object of metric -> number")
    return meta


def check_verbalizer_meta(verb, where) -> None:
    want = 'an object {"words": {label: [words]}, "calibration": null or one number per label}'
    words = verb.get("words") if isinstance(verb, dict) else None
    if not isinstance(words, dict) or not words:
        raise ArtifactError(f"{PROMPT_JSON} field 'verbalizer' must be {want}, got {_shown(verb)}", where=str(where), fix=REWRITE)
    for label, ws in words.items():
        ws = [ws] if isinstance(ws, str) else ws
        if not isinstance(ws, list) or not ws or not all(isinstance(w, str) and w.strip() for w in ws):
            raise ArtifactError(f"{PROMPT_JSON} field 'verbalizer.words' maps label {label!r} to {_shown(words[label])}; each label "
                                "needs a list of non-empty label words", where=str(where), fix=REWRITE)
    cal = verb.get("calibration")
    if cal is not None and (not isinstance(cal, list) or len(cal) != len(words) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in cal)):
        raise ArtifactError(f"{PROMPT_JSON} field 'verbalizer.calibration' must be null or {len(words)} finite numbers (one per "
                            f"label), got {_shown(cal)}", where=str(where), fix=REWRITE)


def check_tensor_file(path) -> None:
    """The structure of a safetensors file (header, offsets, size), checked without reading its data: a truncated or
    foreign file is refused with what is wrong instead of the library's parser message."""
    p = Path(path)

    def bad(what: str):
        return ArtifactError(f"cannot read {PROMPT_TENSORS}: {what}", where=str(p),
                             fix="re-run training to rewrite the artifact, or copy the file again (it may be truncated)")

    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"the file is {size} bytes, shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100_000_000:
            raise bad(f"its header claims {n} bytes but the file holds {size} (truncated, or not a safetensors file)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise bad("its header is not valid JSON (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object (not a safetensors file)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(info.get("dtype") if isinstance(info, dict) else None, str) or not isinstance(shape, list)
                or not all(_is_int(x) and x >= 0 for x in shape) or not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(x) for x in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise bad(f"the header entry of tensor {name!r} is malformed")
        if 8 + n + offsets[1] > size:
            raise bad(f"tensor {name!r} ends at byte {8 + n + offsets[1]} but the file holds {size} (truncated)")


def _versions() -> dict:
    import torch
    import transformers

    from . import __version__

    return {"prompttune": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


# Every name prompttune writes into an output directory: an artifact's own files, and a training run's files
# beside them. A directory holding anything else is not replaced without --overwrite.
RUN_FILES = ("metrics.json", "report.md", "confusion_matrix.png", "training_curve.png", "config.yaml", "train.log",
             "cell.json", "checkpoint", "predictions.jsonl")
OUTPUT_NAMES = frozenset({PROMPT_JSON, PROMPT_TENSORS, BACKBONE_DIR, MODEL_CARD, *RUN_FILES})


def is_output(path: Path) -> bool:
    """Whether ``path``, in an output directory, is one prompttune writes there: a name of OUTPUT_NAMES, and for
    README.md, a model card prompttune wrote (a person's own README.md is kept unless --overwrite)."""
    if path.name == MODEL_CARD:
        return is_card(path)
    return is_ours(path.name, OUTPUT_NAMES)


def save(pm, directory, *, metrics: dict | None = None, extra: dict | None = None, overwrite: bool = False, run=None,
         hub_id: str | None = None) -> Path:
    """Write the artifact of a PromptModel (or GenerationModel) into ``directory``; returns its path.

    The whole directory is built beside it and swapped in at the end, so ``directory`` holds the complete old
    artifact or the complete new one at every instant, even if the process is killed. A directory that holds
    files prompttune did not write is refused unless ``overwrite``. ``run`` and ``hub_id``: for the model card
    (see :func:`write_artifact`)."""
    with staged_directory(directory, ours=is_output, overwrite=overwrite) as stage:
        write_artifact(pm, stage, metrics=metrics, extra=extra, run=run, hub_id=hub_id)
    return Path(directory)


def write_artifact(pm, directory, *, metrics: dict | None = None, extra: dict | None = None, run=None,
                   hub_id: str | None = None) -> Path:
    """Write the artifact's files into ``directory`` (a fresh staging directory: see :func:`save`): prompt.json,
    prompt.safetensors, backbone/ when the method trains it, and the model card README.md rendered from prompt.json.
    ``run``: the training run's ``RunConfig``, whose data (files or corpora, sample, seeds) the card describes;
    ``hub_id``: the Hub repository the card's load commands name (default: a placeholder path)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(pm.method.prompt_tensors(), str(out / PROMPT_TENSORS), metadata={"format": FORMAT})
    if pm.method.trains_backbone:
        pm.backbone.model.save_pretrained(out / BACKBONE_DIR)
        pm.backbone.tokenizer.save_pretrained(out / BACKBONE_DIR)
        if pm.backbone.family.hears:  # a speech model's feature extractor (preprocessor_config.json)
            pm.backbone.family.feature_extractor.save_pretrained(out / BACKBONE_DIR)
    from .tasks import task_of

    task = task_of(pm)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": task.name,
        "template": pm.template.text,
        "method": pm.method.config_dict(),
        "max_length": pm.max_length,
        "padding_side": pm.padding_side,
        "backbone": {**pm.backbone.source, "name": pm.backbone.name, "family": pm.backbone.family.name,
                     "fingerprint": pm.base_fingerprint},
        "trained_backbone": BACKBONE_DIR if pm.method.trains_backbone else None,
        "trainable_parameters": pm.num_trainable_parameters(),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **task.artifact_meta(),
    }
    if metrics:
        meta["metrics"] = {k: metrics[k] for k in task.artifact_metrics if k in metrics}
    if extra:
        meta.update(extra)
    atomic_write_text(out / PROMPT_JSON, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    write_card(out, meta, run=run, hub_id=hub_id)
    return out


def artifact_bytes(directory) -> int:
    """Bytes of the artifact itself (prompt.json + prompt.safetensors + backbone/ if any): what a backbone needs to
    become the tuned model. The model card (README.md) is documentation and does not count. A Hub id counts its
    downloaded snapshot."""
    d = locate(directory) if _hub_only(directory) else Path(directory)
    total = sum((d / f).stat().st_size for f in (PROMPT_JSON, PROMPT_TENSORS) if (d / f).exists())
    if (d / BACKBONE_DIR).is_dir():
        total += sum(p.stat().st_size for p in (d / BACKBONE_DIR).rglob("*") if p.is_file())
    return total


def _hub_only(directory) -> bool:
    """A Hub id with no local directory of that name."""
    from .hub import is_hub_id

    try:
        return is_hub_id(directory) and not Path(directory).exists()
    except (OSError, ValueError, TypeError):
        return False


def locate(directory, *, revision: str | None = None, token=None) -> Path:
    """The local directory of an artifact: ``directory`` itself, or, when no local directory of that name exists and
    it reads as a Hub id (``user/name``, ``user/name@revision``), the snapshot of that Hub repository, downloaded into
    the Hugging Face cache or found there (``HF_HUB_OFFLINE=1``: the cache only). Anything else is returned as a
    path, for the reader's own "not an artifact" error. Hub failures raise ArtifactError (what, the id, the fix)."""
    if not _hub_only(directory):
        return Path(directory)
    from .hub import download_artifact

    return download_artifact(directory, revision=revision, token=token)


def read_meta(directory) -> dict:
    """The checked prompt.json of the artifact ``directory`` (a local directory or a Hub id: :func:`locate`)."""
    d = locate(directory)
    path = d / PROMPT_JSON
    try:
        found = path.is_file()
    except (OSError, ValueError) as e:  # a path the OS refuses outright (too long, a NUL byte)
        raise ArtifactError(f"the artifact path cannot be used ({getattr(e, 'strerror', None) or e})", where=str(d)[:200],
                            fix="point to the output directory of `prompttune train`") from None
    if not found:
        raise ArtifactError(f"{d} is not a prompttune artifact (no {PROMPT_JSON})", where=str(d),
                            fix="point to the output directory of `prompttune train`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{PROMPT_JSON} is not valid JSON ({e})", where=str(path), fix="re-run training to rewrite the artifact") from None
    except RecursionError:
        raise ArtifactError(f"{PROMPT_JSON} is nested too deeply to be a prompttune artifact", where=str(path),
                            fix="re-run training to rewrite the artifact") from None
    except OSError as e:
        raise ArtifactError(f"{PROMPT_JSON} cannot be read ({e.strerror or e})", where=str(path),
                            fix="check the file's permissions") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{PROMPT_JSON} is not a prompttune artifact", where=str(path), fix="point to a directory written by prompttune")
    validate_meta(meta, path)
    tensors = d / PROMPT_TENSORS
    if tensors.is_file():
        check_tensor_file(tensors)
    return meta


def load(directory, *, backbone=None, revision: str | None = None, token=None):
    """Load an artifact: a local directory, or a Hub id ``user/name[@revision]`` (:func:`locate`; ``revision`` and
    ``token`` go to the Hub). ``backbone``: a Backbone already in memory (e.g. shared by a server); by default the
    one named in prompt.json is loaded. A backbone whose fingerprint differs is refused."""
    from .methods import make_method
    from .tasks import task_type

    d = locate(directory, revision=revision, token=token)
    meta = read_meta(d)
    check_confined(d, meta)
    method_cfg = dict(meta["method"])
    name = method_cfg.pop("name")
    task = task_type(meta.get("task", "classification"), where=str(d / PROMPT_JSON))
    backbone = _artifact_backbone(d, meta, backbone, num_labels=task.num_labels(meta))
    return _load_tensors(task.from_artifact(meta, backbone, make_method(name, **method_cfg)), d, meta)


def check_confined(d: Path, meta: dict) -> None:
    """Every file an artifact makes us read lies inside its directory, symlinks resolved: an artifact can only
    read what is inside it (whatever route loads it: Python, the CLI, the server). A Hugging Face cache snapshot's
    files are links into its repository's ``blobs`` folder, which counts as inside (:func:`prompttune.hub.snapshot_blobs`)."""
    from .hub import snapshot_blobs

    tb = meta.get("trained_backbone")
    if tb not in (None, BACKBONE_DIR):
        raise ArtifactError(f"prompt.json names the fine-tuned backbone at {tb!r}; an artifact's own backbone is always "
                            f"its {BACKBONE_DIR!r} subdirectory", where=str(d / PROMPT_JSON),
                            fix=f'set "trained_backbone" to "{BACKBONE_DIR}" (or null), or re-run training to rewrite the artifact')
    roots = [d.resolve()] + [b for b in (snapshot_blobs(d),) if b is not None]
    paths = [d / PROMPT_JSON, d / PROMPT_TENSORS]
    if tb:
        paths.append(d / BACKBONE_DIR)
        if (d / BACKBONE_DIR).is_dir() and not (d / BACKBONE_DIR).is_symlink():
            paths += sorted((d / BACKBONE_DIR).rglob("*"))
    for p in paths:
        if (p.exists() or p.is_symlink()) and not any(p.resolve().is_relative_to(r) for r in roots):
            raise ArtifactError(f"{p.relative_to(d)} points outside the artifact directory (to {p.resolve()})", where=str(d),
                                fix="copy the file into the artifact instead of linking to it; an artifact only reads what is inside it")


def _artifact_backbone(d: Path, meta: dict, backbone, *, num_labels):
    """The artifact's own fine-tuned backbone, or the named one (or ``backbone``) after a fingerprint check."""
    from .backbone import Backbone

    bmeta = meta["backbone"]
    if meta.get("trained_backbone"):
        if backbone is not None:
            raise ArtifactError("this artifact carries its own fine-tuned backbone; it cannot be attached to another one",
                                where=str(d), fix="load it without passing a backbone")
        backbone = Backbone.load(str(d / meta["trained_backbone"]), family=bmeta.get("family"),
                                 num_labels=num_labels, dtype=bmeta.get("dtype", "float32"))
        backbone.name, backbone.source = bmeta["name"], {k: v for k, v in bmeta.items() if k != "fingerprint"}
    else:
        if backbone is None:
            backbone = Backbone.load(bmeta["name"], family=bmeta.get("family"), num_labels=num_labels,
                                     dtype=bmeta.get("dtype", "float32"), revision=bmeta.get("revision"))
        fp = backbone.fingerprint()
        if bmeta.get("fingerprint") and fp != bmeta["fingerprint"]:
            raise ArtifactError(f"this prompt was trained on {bmeta['name']!r} (fingerprint {bmeta['fingerprint']}), "
                                f"but the backbone given is {backbone.name!r} (fingerprint {fp})", where=str(d),
                                fix=f"load it onto {bmeta['name']!r}, the model it was trained on")
    return backbone


def check_finite(tensors: dict, where: Path) -> None:
    """Prompt weights are finite: NaN or Inf would give NaN probabilities, not an answer. (Names, dtypes and
    shapes are the method's to check: ``methods.base.check_tensors``.)"""
    import torch

    for name, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            raise ArtifactError(f"tensor {name!r} holds {bad} NaN or infinite value(s) of {t.numel()}", where=str(where),
                                fix="re-run training (a diverged run: lower train.lr), or restore the artifact from a copy")


def _load_tensors(pm, d: Path, meta: dict):
    pm.base_fingerprint = meta["backbone"].get("fingerprint")
    tpath = d / PROMPT_TENSORS
    if not tpath.is_file():
        raise ArtifactError(f"{PROMPT_TENSORS} is missing", where=str(d), fix="re-run training to rewrite the artifact")
    try:
        tensors = load_file(str(tpath))
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise ArtifactError(f"cannot read {PROMPT_TENSORS}: {e}", where=str(tpath), fix="re-run training to rewrite the artifact") from None
    check_finite(tensors, tpath)
    try:
        pm.method.load_prompt_tensors(tensors)
    except ArtifactError as e:  # the method names the mismatch; where and the fix are the artifact's
        raise ArtifactError(e.what, where=str(tpath), fix="load it onto the method, options and backbone it was trained "
                            "with, or re-run training to rewrite the artifact") from None
    except Exception as e:  # a tensor of another shape or name than the method has
        raise ArtifactError(f"cannot load {PROMPT_TENSORS}: {e}", where=str(tpath), fix="re-run training to rewrite the artifact") from None
    pm.eval()
    return pm
