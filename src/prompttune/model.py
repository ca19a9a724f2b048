"""PromptModel: a prompt (template + verbalizer) attached to a backbone by a method.

This is the Python API's centre::

    from prompttune import PromptModel
    pm = PromptModel("smollm2-135m", "Review: {text}\\nSentiment: {mask}", {"negative": "negative", "positive": "positive"},
                     method="prefix")                  # the default method; a Backbone object works in place of the name
    pm.fit(train_rows, dev_rows)
    print(pm.evaluate(test_rows)["accuracy"])
    pm.save_pretrained("out/")
    pm = PromptModel.from_pretrained("out/")            # (prompttune.load("out/") loads any task's artifact)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from .backbone import Backbone, Rows
from .errors import ArtifactError, ConfigError, check_input_texts
from .methods import Method, make_method
from .progress import progress_bar
from .schemas import DEFAULT_METHOD
from .template import Renderer, Template, tail_is_empty
from .verbalizer import CONTENT_FREE_INPUTS, Verbalizer, prediction


class Tunable:
    """What every prompt model (classification, generation) shares: training through the one trainer, and saving
    and loading as transformers and PEFT do (``save_pretrained`` / ``from_pretrained`` of the saved artifact)."""

    task: ClassVar[str]  # the registered task type (``prompttune.tasks``) that trains, evaluates and saves this model
    labelled: ClassVar[bool] = True  # its training and evaluation rows carry a label (classification) or not

    @classmethod
    def from_pretrained(cls, id_or_dir, *, backbone: Backbone | None = None, revision: str | None = None, token=None):
        """Load an artifact written by :meth:`save_pretrained` (or ``prompttune train``): a local directory, or a Hub id
        ``user/name`` (``user/name@revision``) when no local directory of that name exists, downloaded into the Hugging
        Face cache (``HF_HUB_OFFLINE=1``: the cache only) and checked as a local artifact is. ``backbone``: one already
        in memory to attach it to (refused when the artifact was trained on another)."""
        from .artifact import load

        model = load(id_or_dir, backbone=backbone, revision=revision, token=token)
        if not isinstance(model, cls):
            raise ArtifactError(f"{id_or_dir} holds a {model.task} artifact, not a {cls.task} one", where=str(id_or_dir),
                                fix=f"load it with {type(model).__name__}.from_pretrained, or with prompttune.load")
        return model

    def save_pretrained(self, directory, push_to_hub: bool = False, *, repo_id: str | None = None, private: bool | None = None,
                        token=None, commit_message: str | None = None, **options):
        """Write the artifact (prompt.json + prompt.safetensors + the model card README.md, and the backbone if the
        method trained it); returns its path. ``options``: ``metrics``, ``extra``, ``overwrite``, ``run`` of
        :func:`prompttune.artifact.save`. ``push_to_hub``: then upload the directory to ``repo_id`` (default: the
        directory's name, in your namespace) as :meth:`push_to_hub` does."""
        from .artifact import save

        if not push_to_hub:
            return save(self, directory, **options)
        from pathlib import Path

        from .hub import parse_hub_id, upload_artifact

        repo_id = repo_id or Path(directory).name
        named = repo_id if parse_hub_id(repo_id) is not None and "@" not in repo_id else None  # the card's load commands
        out = save(self, directory, hub_id=options.pop("hub_id", named), **options)
        upload_artifact(out, repo_id, private=private, token=token, commit_message=commit_message)
        return out

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token=None,
                    commit_message: str = "Upload prompttune artifact", metrics: dict | None = None) -> str:
        """Upload the artifact to the Hub model repository ``repo_id`` (``user/name``, or ``name`` in your namespace;
        created if missing, ``private`` as given): saved into a temporary directory (its card naming the repository),
        then ``HfApi.create_repo`` + ``upload_folder``. ``metrics``: test metrics for the card. Returns the commit URL.
        Load it back anywhere with ``from_pretrained(repo_id)`` / ``prompttune.load(repo_id)``."""
        from .hub import push_artifact

        return push_artifact(self, repo_id, private=private, token=token, commit_message=commit_message, metrics=metrics)

    save = save_pretrained

    def fit(self, train_rows, dev_rows=None, **train_options):
        """Train on ``train_rows`` (dicts, or a ``datasets.Dataset``; a ``DatasetDict`` gives its train split, and its
        validation split as the dev rows when ``dev_rows`` is None)."""
        from .data import as_rows, is_dataset_dict
        from .train import TrainConfig, train

        if dev_rows is None and is_dataset_dict(train_rows) and any(s in train_rows for s in ("validation", "dev", "valid", "val")):
            dev_rows = as_rows(train_rows, role="dev", require_label=self.labelled)
        train_rows = as_rows(train_rows, role="train", require_label=self.labelled)
        dev_rows = as_rows(dev_rows, role="dev", require_label=self.labelled)
        return train(self, train_rows, dev_rows, TrainConfig(**train_options))

    def num_trainable_parameters(self) -> int:
        if not self.method.trainable:
            return 0
        return sum(p.numel() for p in self.method.trainable_parameters(self.backbone))

    def _as_row(self, x, index: int | None = None) -> dict:
        """An input as a template row: a plain string fills a one-field template. ``index``: its place among the
        inputs, named in errors."""
        where = "predict input" if index is None else f"input {index}"
        check_input_texts(x, where)
        if isinstance(x, Mapping):
            return dict(x)
        fields = self.template.fields
        if len(fields) != 1:
            raise ConfigError(f"this template has fields {fields}; a bare string fills only a one-field template",
                              where=where, fix="pass a JSON object with one key per field")
        return {fields[0]: str(x)}


class PromptModel(Tunable, nn.Module):
    """Backbone + template + verbalizer + method. ``forward(rows)`` gives (B, C) class log-probabilities."""

    task = "classification"

    def __init__(self, backbone: Backbone | str, template: Template | str, verbalizer: Verbalizer | Mapping | Sequence,
                 method: Method | str = DEFAULT_METHOD, *, max_length: int = 256, padding_side: str = "right",
                 method_options: dict | None = None, init: bool = True, seed: int = 0, demonstrations=None,
                 backbone_options: dict | None = None):
        """``backbone``: a :class:`Backbone`, or a model name (short name, hub id, directory, .gguf) loaded with
        ``backbone_options`` (family, dtype, gguf_file, revision, trust_remote_code)."""
        super().__init__()
        template = template if isinstance(template, Template) else Template(template)
        verbalizer = Verbalizer.from_spec(verbalizer)
        verbalizer.check_classes()
        method = method if isinstance(method, Method) else make_method(method, **(method_options or {}))  # bad options: before any load
        if not isinstance(backbone, Backbone):
            backbone = Backbone.load(backbone, num_labels=len(verbalizer.labels), task_head=method.needs_task_head,
                                     **(backbone_options or {}))
        if method.needs_task_head and not backbone.family.has_task_head:
            raise ConfigError(f"method {method.name!r} needs a model with a classification head, but {backbone.name!r} is loaded as "
                              f"{backbone.family.name}", where="model.family", fix="load the model with family: encoder-head")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be left or right, got {padding_side!r}", where="padding_side", fix="use left or right")
        template = method.prepare_template(template)
        uses_mask = method.needs_mask and backbone.family.uses_verbalizer
        template.check(needs_mask=uses_mask)
        self.backbone = backbone
        self.template = template
        self.verbalizer = verbalizer
        self.method = method
        self.max_length = max_length
        self.padding_side = padding_side
        self.model = backbone.model  # registered so .parameters() / accelerate see the backbone
        self.base_fingerprint = backbone.fingerprint()  # of the weights before any training
        self.method.attach(backbone, template, verbalizer, init=init, seed=seed)
        fam = backbone.family
        self.renderer = Renderer(template, backbone.tokenizer, max_length=max_length, placeholder_id=fam.placeholder_id(), soft_id=fam.pad_id,
                                 drop_mask=not uses_mask, **fam.renderer_options(template))
        if uses_mask:
            words = verbalizer.encode(backbone.tokenizer, leading_space=self.renderer.space_before_mask and fam.leading_space())
            self.word_ids = [w for ws in words for w in ws]
            self.word_class = torch.tensor([c for c, ws in enumerate(words) for _ in ws])
            self.fast = fam.fast_ok(self.word_ids, tail_is_empty(template.segments))
            self.reserve = fam.reserve(self.word_ids)
        else:
            self.word_ids, self.word_class, self.fast, self.reserve = [], torch.zeros(0, dtype=torch.long), True, 0
        self._render_cache: OrderedDict = OrderedDict()
        self.demonstrations = None
        if demonstrations is not None:
            self.set_demonstrations(demonstrations)

    def set_demonstrations(self, demonstrations) -> None:
        """Put labelled examples in front of every input (``prompttune.demonstrations``); None removes them."""
        if demonstrations is not None:
            demonstrations.bind(self)
        self.demonstrations = demonstrations
        self._render_cache.clear()

    @property
    def labels(self) -> list[str]:
        return self.verbalizer.labels

    @property
    def device(self) -> torch.device:
        return self.backbone.model.get_input_embeddings().weight.device

    # ---- data -> model rows ----------------------------------------------------------------
    def label_word_tokens(self) -> dict[str, list[list[str]]]:
        """Each label's words as the tokens they are scored by (nothing for a method that answers with a task head)."""
        if not self.word_ids:
            return {}
        tok = self.backbone.tokenizer
        words = self.verbalizer.encode(tok, leading_space=self.renderer.space_before_mask and self.backbone.family.leading_space())
        return {label: [tok.convert_ids_to_tokens(ids) for ids in ws] for label, ws in zip(self.labels, words)}

    def render(self, row: Mapping[str, str]):
        # a field's text, or (an array heard at {audio}) the object itself: the cached rendering keeps it alive
        key = tuple(v if isinstance(v := row.get(f, ""), str) else ("#", id(v)) for f in self.template.fields)
        hit = self._render_cache.get(key)
        if hit is None:
            hit = self.renderer.render(row, reserve=self.reserve)
            if self.demonstrations is not None:
                hit = self.demonstrations.apply(row, hit, reserve=self.reserve)
            self._render_cache[key] = hit
            if len(self._render_cache) > 200_000:
                self._render_cache.popitem(last=False)
        return hit

    def collate(self, rows: Sequence[Mapping[str, str]]) -> Rows:
        rendered = [self.render(r) for r in rows]
        return self.backbone.family.build(rendered, self.word_ids, fast=self.fast, padding_side=self.padding_side)

    def labels_tensor(self, rows: Sequence[Mapping[str, str]]) -> torch.Tensor:
        return torch.tensor([self.verbalizer.label_index(r["label"]) for r in rows])

    def length(self, row: Mapping[str, str]) -> int:
        return len(self.render(row).ids)

    # ---- scoring ---------------------------------------------------------------------------
    def forward(self, batch: Rows, *, calibrate: bool = True) -> torch.Tensor:
        batch = batch.to(self.device)
        scores = self.backbone.family.word_scores(self.method.model_inputs(self.backbone, batch), batch)
        if not self.backbone.family.uses_verbalizer:
            if calibrate and self.verbalizer.calibration is not None:
                scores = scores - torch.tensor(self.verbalizer.calibration, device=scores.device)
            return scores.log_softmax(-1)
        return self.verbalizer.class_log_probs(scores, self.word_class.to(scores.device), calibrate=calibrate)

    @torch.no_grad()
    def predict_log_probs(self, rows: Sequence[Mapping[str, str]], *, batch_size: int = 16, progress: bool = False,
                          calibrate: bool = True) -> torch.Tensor:
        from .data import length_batches

        was_training = self.training
        self.eval()
        out = torch.empty(len(rows), len(self.labels))
        batches = length_batches([self.length(r) for r in rows], batch_size, shuffle=False)
        bar = progress_bar(progress, len(rows), "predict")
        for idx in batches:
            out[idx] = self(self.collate([rows[i] for i in idx]), calibrate=calibrate).float().cpu()
            bar.update(len(idx))
        bar.close()
        self.train(was_training)
        return out

    def predict(self, inputs: Iterable[str | Mapping[str, str]], *, batch_size: int = 16) -> list[dict]:
        """Labels with per-class probabilities. A plain string fills the template's only field (a ``datasets.Dataset``
        gives its rows)."""
        from .data import as_rows

        rows = [self._as_row(x, i) for i, x in enumerate(as_rows(inputs, role="test", require_label=False))]
        probs = self.predict_log_probs(rows, batch_size=batch_size).exp()
        return [prediction(self.labels, p) for p in probs]

    def calibrate(self) -> list[float]:
        """Contextual calibration: score content-free inputs ("N/A", "", "[MASK]") and store the bias."""
        self.verbalizer.calibration = None
        from .template import AUDIO_FIELD

        heard = {AUDIO_FIELD: self.backbone.family.content_free_audio()} if self.backbone.family.hears else {}
        rows = [{**{f: cf for f in self.template.fields}, **heard} for cf in CONTENT_FREE_INPUTS]
        self.verbalizer.set_calibration(self.predict_log_probs(rows, calibrate=False))
        return self.verbalizer.calibration

    def evaluate(self, rows: Sequence[Mapping[str, str]], *, batch_size: int = 16, progress: bool = False) -> dict:
        from .data import as_rows
        from .metrics import classification_metrics

        rows = as_rows(rows, role="test")  # a datasets.Dataset (or a DatasetDict's test split) works as rows
        self.verbalizer.check_labels([r["label"] for r in rows], where="evaluation data")
        start = time.perf_counter()
        logp = self.predict_log_probs(rows, batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - start
        y_true = self.labels_tensor(rows).tolist()
        y_pred = logp.argmax(-1).tolist()
        m = classification_metrics(y_true, y_pred, self.labels)
        m["examples_per_second"] = len(rows) / seconds if seconds > 0 else None
        m["seconds"] = seconds
        m["trainable_parameters"] = self.num_trainable_parameters()
        m["predictions"] = y_pred
        m["probabilities"] = logp.exp().max(-1).values.tolist()
        return m


