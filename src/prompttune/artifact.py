"""Artifacts: ``prompt.json`` (template, verbalizer, method, backbone id + fingerprint, versions) and
``prompt.safetensors`` (only the trained prompt parameters). Methods that train the backbone also save it
with ``save_pretrained`` into ``backbone/``. Never pickle. Every file is written under a temporary name
and renamed; ``prompt.json`` is written last, so a directory with it is a complete artifact.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from .errors import ArtifactError

FORMAT = "prompttune-artifact"
FORMAT_VERSION = 1
PROMPT_JSON = "prompt.json"
PROMPT_TENSORS = "prompt.safetensors"
BACKBONE_DIR = "backbone"


def _versions() -> dict:
    import torch
    import transformers

    from . import __version__

    return {"prompttune": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(pm, directory, *, metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write the artifact of a PromptModel into ``directory``; returns its path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = pm.method.prompt_tensors()
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{PROMPT_TENSORS}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT})
        os.replace(tmp, out / PROMPT_TENSORS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if pm.method.trains_backbone:
        tmpdir = Path(tempfile.mkdtemp(dir=out, prefix=f".{BACKBONE_DIR}."))
        try:
            pm.backbone.model.save_pretrained(tmpdir)
            pm.backbone.tokenizer.save_pretrained(tmpdir)
            if (out / BACKBONE_DIR).exists():
                shutil.rmtree(out / BACKBONE_DIR)
            os.replace(tmpdir, out / BACKBONE_DIR)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": getattr(pm, "task", "classification"),
        "template": pm.template.text,
        "verbalizer": pm.verbalizer.to_dict() if getattr(pm, "verbalizer", None) is not None else None,
        "method": pm.method.config_dict(),
        "max_length": pm.max_length,
        "padding_side": pm.padding_side,
        "backbone": {**pm.backbone.source, "name": pm.backbone.name, "family": pm.backbone.family.name,
                     "fingerprint": pm.base_fingerprint},
        "trained_backbone": BACKBONE_DIR if pm.method.trains_backbone else None,
        "trainable_parameters": pm.num_trainable_parameters(),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(pm, "artifact_meta"):  # another task (generation) records what it needs to rebuild itself
        meta.update(pm.artifact_meta())
    if getattr(pm, "demonstrations", None) is not None:
        meta["demonstrations"] = pm.demonstrations.to_dict()
    if metrics:
        meta["metrics"] = {k: metrics[k] for k in ("accuracy", "macro_f1", "n", "rouge1", "rouge2", "rougeL", "bleu", "chrf")
                           if k in metrics}
    if extra:
        meta.update(extra)
    _atomic_write_text(out / PROMPT_JSON, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out


def artifact_bytes(directory) -> int:
    """Bytes of the artifact itself (prompt.json + prompt.safetensors + backbone/ if any)."""
    d = Path(directory)
    total = sum((d / f).stat().st_size for f in (PROMPT_JSON, PROMPT_TENSORS) if (d / f).exists())
    if (d / BACKBONE_DIR).is_dir():
        total += sum(p.stat().st_size for p in (d / BACKBONE_DIR).rglob("*") if p.is_file())
    return total


def read_meta(directory) -> dict:
    d = Path(directory)
    path = d / PROMPT_JSON
    if not path.is_file():
        raise ArtifactError(f"{d} is not a prompttune artifact (no {PROMPT_JSON})", where=str(d),
                            fix="point to the output directory of `prompttune train`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{PROMPT_JSON} is not valid JSON ({e})", where=str(path), fix="re-run training to rewrite the artifact") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{PROMPT_JSON} is not a prompttune artifact", where=str(path), fix="point to a directory written by prompttune")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"artifact format {meta.get('format_version')} is newer than this prompttune understands ({FORMAT_VERSION})",
                            where=str(path), fix="upgrade prompttune")
    for key in ("template", "verbalizer", "method", "backbone"):
        if key not in meta:
            raise ArtifactError(f"{PROMPT_JSON} lacks {key!r}", where=str(path), fix="re-run training to rewrite the artifact")
    return meta


def load(directory, *, backbone=None):
    """Load an artifact. ``backbone``: a Backbone already in memory (e.g. shared by a server); by default the
    one named in prompt.json is loaded. A backbone whose fingerprint differs is refused."""
    from .methods import make_method
    from .model import PromptModel
    from .verbalizer import Verbalizer

    d = Path(directory)
    meta = read_meta(d)
    method_cfg = dict(meta["method"])
    name = method_cfg.pop("name")
    if meta.get("task", "classification") == "generation":
        from .generation import GenerateConfig, GenerationModel

        backbone = _artifact_backbone(d, meta, backbone, num_labels=None)
        pm = GenerationModel(backbone, meta["template"], meta["target"], make_method(name, **method_cfg),
                             max_length=meta.get("max_length", 256), max_target_length=meta.get("max_target_length", 64), init=False)
        if pm.template.text != meta["template"]:
            raise ArtifactError("the saved template does not rebuild as saved", where=str(d), fix="re-run training to rewrite the artifact")
        pm.space_into_target = bool(meta.get("space_into_target", pm.space_into_target))
        pm.generation = GenerateConfig.model_validate(meta.get("generation") or {})
        return _load_tensors(pm, d, meta)
    backbone = _artifact_backbone(d, meta, backbone, num_labels=len(meta["verbalizer"]["words"]))
    pm = PromptModel(backbone, meta["template"], Verbalizer.from_dict(meta["verbalizer"]), make_method(name, **method_cfg),
                     max_length=meta.get("max_length", 256), padding_side=meta.get("padding_side", "right"), init=False)
    return _load_tensors(pm, d, meta)


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


def _load_tensors(pm, d: Path, meta: dict):
    pm.base_fingerprint = meta["backbone"].get("fingerprint")
    if meta.get("demonstrations"):
        from .demonstrations import Demonstrations

        pm.set_demonstrations(Demonstrations.from_dict(meta["demonstrations"]))
    tpath = d / PROMPT_TENSORS
    if not tpath.is_file():
        raise ArtifactError(f"{PROMPT_TENSORS} is missing", where=str(d), fix="re-run training to rewrite the artifact")
    try:
        tensors = load_file(str(tpath))
        pm.method.load_prompt_tensors(tensors)
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise ArtifactError(f"cannot read {PROMPT_TENSORS}: {e}", where=str(tpath), fix="re-run training to rewrite the artifact") from None
    pm.eval()
    return pm
