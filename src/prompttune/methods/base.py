"""The method interface: how a way of adding trainable prompt parameters plugs into the model.

A method decides which parameters train (soft-token rows, the backbone's weights, a head), how input ids
become input embeddings, and what goes into the artifact. The trainer, evaluator and artifact code only
call this interface; adding a method is adding a file.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from ..errors import ArtifactError, ConfigError, TemplateError, validation_summary
from ..schemas import MethodOptions
from ..template import Template


_SOFT_INITS = ("auto", "text", "labels", "vocab", "random")


class SoftTable(nn.Module):
    """The soft-token rows of a template, optionally produced by a P-tuning prompt encoder.

    The encoder is residual with a zero-initialised output layer, so training starts exactly at the
    initial embeddings (a text-initialised prompt is not scrambled by a random MLP on step one).
    """

    def __init__(self, n: int, hidden: int, *, encoder: str = "none", encoder_hidden: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, hidden))
        self.encoder_kind = encoder
        eh = encoder_hidden or hidden
        if encoder == "lstm":
            self.lstm = nn.LSTM(hidden, eh // 2 or 1, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * (eh // 2 or 1), eh), nn.ReLU(), nn.Linear(eh, hidden))
        elif encoder == "mlp":
            self.mlp = nn.Sequential(nn.Linear(hidden, eh), nn.ReLU(), nn.Linear(eh, hidden))
        if encoder != "none":
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self) -> torch.Tensor:
        if self.encoder_kind == "none":
            return self.weight
        x = self.weight
        if self.encoder_kind == "lstm":
            x = self.lstm(x[None])[0][0]
        return self.weight + self.mlp(x)


def _init_rows(backbone, template: Template, verbalizer, init: str, n: int, seed: int = 0) -> torch.Tensor:
    emb = backbone.model.get_input_embeddings().weight.detach().float()
    tok = backbone.tokenizer
    gen = torch.Generator().manual_seed(seed)
    rows = torch.empty(n, emb.shape[1])
    label_ids = [i for ws in verbalizer.encode(tok, leading_space=True) for w in ws for i in w] if verbalizer is not None else []
    for g in template.soft_groups(tok):
        how = init
        if how == "auto":
            how = "text" if g.init else ("labels" if label_ids else "vocab")
        if how == "text":
            if not g.init:
                raise TemplateError("init: text needs init words in the template, e.g. {soft*20:Classify the sentiment}",
                                    where="template", fix="add words after ':' in the soft placeholder, or set init to labels, vocab or random")
            ids = tok(g.init, add_special_tokens=False)["input_ids"]
        elif how == "labels":
            ids = label_ids
        elif how == "vocab":
            # Frequent-token rows (low ids in BPE vocabularies) give embeddings of a typical norm.
            top = min(emb.shape[0], 5000)
            ids = torch.randint(0, top, (g.count,), generator=gen).tolist()
        else:
            std = float(emb.std())
            rows[g.start:g.start + g.count] = torch.randn(g.count, emb.shape[1], generator=gen) * std
            continue
        ids = (ids * math.ceil(g.count / max(len(ids), 1)))[: g.count]
        rows[g.start:g.start + g.count] = emb[torch.tensor(ids)]
    return rows


class Method(nn.Module):
    """Base class. Subclasses set ``name`` and the class flags, and may override the hooks."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = MethodOptions  # its schema, from prompttune.schemas (METHOD_OPTIONS)
    default_lr: ClassVar[float] = 1e-3
    description: ClassVar[str] = ""
    # What the method can do: callers (trainer, artifact, server, PEFT interop, experiments) ask these, never the name.
    trainable: ClassVar[bool] = True  # has parameters to train
    trains_backbone: ClassVar[bool] = False  # trains the backbone's own weights (saved with the artifact)
    needs_mask: ClassVar[bool] = True  # scores label words at the template's {mask}
    needs_task_head: ClassVar[bool] = False  # needs a backbone with a classification head (encoder + head)
    generates: ClassVar[bool] = True  # can drive a generation task
    servable: ClassVar[bool] = False  # a server can run it on a frozen backbone shared with other prompts
    shares_batch: ClassVar[bool] = False  # its prompt is soft rows of the input: rows of other prompts share its forward
    peft_type: ClassVar[str | None] = None  # the PEFT prompt-learning adapter that is the same prompt (export / import)

    def __init__(self, **options):
        super().__init__()
        try:
            self.options = self.Options(**options)
        except Exception as e:  # pydantic.ValidationError
            raise ConfigError(f"bad options for method {self.name!r}: {validation_summary(e)}", where="method",
                              fix=f"valid options: {', '.join(self.Options.model_fields)}") from None
        self.soft: SoftTable | None = None
        self._head: dict[str, nn.Parameter] = {}  # a frozen encoder + head backbone's task head, trained with the prompt

    # ---- hooks -------------------------------------------------------------------------------
    def prepare_template(self, template: Template) -> Template:
        return template

    def attach(self, backbone, template: Template, verbalizer, *, init: bool = True, seed: int = 0) -> None:
        """Create this method's parameters for ``backbone`` and set what trains."""
        self.set_trainable(backbone)
        n = template.n_soft(backbone.tokenizer)
        if n:
            o = self.options  # methods whose options have no soft-token settings get the defaults
            with torch.random.fork_rng(devices=[]):  # a P-tuning encoder starts the same for the same seed, in every process
                torch.manual_seed(seed)
                self.soft = SoftTable(n, backbone.hidden_size, encoder=getattr(o, "encoder", "none"),
                                      encoder_hidden=getattr(o, "encoder_hidden", 0))
            if init:
                how = getattr(o, "init", "auto")
                with torch.no_grad():
                    self.soft.weight.copy_(_init_rows(backbone, template, verbalizer, how if how in _SOFT_INITS else "auto", n, seed))
            self.soft.to(backbone.model.get_input_embeddings().weight.device)

    @property
    def trained_head(self) -> dict[str, nn.Parameter]:
        """The classification head of an encoder + head backbone that trains with this prompt (empty otherwise)."""
        return self._head

    def fit(self, pm, train_rows, dev_rows, cfg):
        """A method that does not train by backpropagating a loss (e.g. a policy gradient) trains here and returns
        a ``TrainResult``; None (the default) means the trainer's gradient loop trains ``trainable_parameters``."""
        return None

    def set_trainable(self, backbone) -> None:
        """Freeze or unfreeze the backbone as this method trains it (another model on the same backbone may have changed it).

        A frozen encoder + head backbone keeps its task head trainable (as PEFT's modules_to_save does): a freshly
        initialised classification head cannot be left random. The head is then saved with the prompt."""
        if self.trains_backbone:
            backbone.unfreeze()
            return
        backbone.freeze()
        self._head = backbone.head_parameters() if backbone.family.has_task_head and self.trainable else {}
        for p in self._head.values():
            p.requires_grad_(True)

    # ---- the one door into the model ----------------------------------------------------------
    def model_inputs(self, backbone, batch) -> dict:
        """The model's keyword arguments for a batch (``Rows`` or ``GenBatch``): ids become embeddings with this
        method's soft rows written in, and its prefix (if any) is put in every attention layer. Training,
        evaluation, generation, search and serving all enter the model here."""
        return backbone.inputs(self.embed(backbone, batch.input_ids, batch.soft_index), batch.attention_mask,
                               prefix=self.prefix_kv(backbone), batch=batch)

    def soft_table(self, backbone) -> torch.Tensor | None:
        """The soft-token rows as the model sees them (a P-tuning encoder applied), or None."""
        return self.soft() if self.soft is not None else None

    def embed(self, backbone, input_ids: torch.Tensor, soft_index: torch.Tensor) -> torch.Tensor:
        return backbone.embed(input_ids, soft_index, self.soft_table(backbone))

    def prefix_kv(self, backbone) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Keys and values to put in front of every self-attention layer, or None (deep prompt methods override)."""
        return None

    def trainable_parameters(self, backbone) -> list[nn.Parameter]:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.trains_backbone:
            params += [p for p in backbone.model.parameters() if p.requires_grad]
        else:
            params += list(self._head.values())
        return params

    def prompt_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved in prompt.safetensors (the backbone, if trained, is saved separately)."""
        out = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        out.update({f"head/{k}": v.detach().cpu().contiguous() for k, v in self._head.items()})
        return out

    def load_prompt_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        head = {k[5:]: v for k, v in tensors.items() if k.startswith("head/")}
        own = {k: v for k, v in tensors.items() if not k.startswith("head/")}
        check_tensors(own, self.state_dict(), f"the {self.name} method with these options")
        if set(head) != set(self._head):
            raise ArtifactError(f"head tensors {sorted(head)} do not match the backbone's classification head {sorted(self._head)}")
        check_tensors(head, {k: p.detach() for k, p in self._head.items()}, "the backbone's classification head")
        self.load_state_dict(own, strict=True)
        with torch.no_grad():
            for k, v in head.items():
                self._head[k].copy_(v)

    def config_dict(self) -> dict:
        return {"name": self.name, **self.options.model_dump()}


def check_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """Saved tensors against the ones a module expects: same names, shapes and kind of dtype (float / integer).

    Raises ArtifactError (without where/fix: the artifact loader adds them) naming the first mismatch."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        parts = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else [])
        raise ArtifactError(f"the saved tensors do not fit {what} ({', '.join(parts)}): the artifact was written "
                            "for another method, other options or another backbone")
    for k, w in want.items():
        t = got[k]
        if not isinstance(t, torch.Tensor):
            raise ArtifactError(f"tensor {k!r} is not a tensor")
        if t.is_floating_point() != w.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            kind = "floating point" if w.is_floating_point() else "integer"
            raise ArtifactError(f"tensor {k!r} has dtype {str(t.dtype).replace('torch.', '')}; {what} stores it as {kind} "
                                f"({str(w.dtype).replace('torch.', '')})")
        if tuple(t.shape) != tuple(w.shape):
            raise ArtifactError(f"tensor {k!r} has shape {list(t.shape)}, but {what} on this backbone needs {list(w.shape)}")
