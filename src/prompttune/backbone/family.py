"""What every model family answers: what goes in the mask slot, how rendered examples become model rows, how the
model's outputs become one score per label word, and (for the families that generate) how a source and a target
become a teacher-forced batch and how ``generate`` is called. The families themselves are in ``causal.py`` and
``families.py``; nothing above this package asks a family's name."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import BackboneError

from ..template import Rendered
from .rows import GenBatch, Rows, mask_of, pad


@dataclass
class PromptCache:
    """Past keys/values for a batch's rows: per attention layer (R, heads, P, head_dim), each row's own prefix
    right-aligned in the P positions (``lengths[r]`` of them real, the rest masked out)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    lengths: torch.Tensor  # (R,)

    @property
    def width(self) -> int:
        """P: the positions the cache holds."""
        return max((k.shape[2] for k, _ in self.layers), default=0)

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """(R, P) attention mask of the cached positions: each row's own ``lengths[r]`` last ones."""
        P = self.width
        return (torch.arange(P, device=like.device)[None, :] >= (P - self.lengths.to(like.device))[:, None]).to(like.dtype)


class Family:
    """What differs between model families. Capabilities are class attributes that callers ask, never the name."""

    name: ClassVar[str]
    auto_class: ClassVar[str]
    uses_verbalizer: ClassVar[bool] = True  # scores label words at a mask (else: a classification head's logits)
    has_task_head: ClassVar[bool] = False  # carries a classification head of its own (trained with the prompt)
    generates: ClassVar[bool] = False  # can generate text (summarization, translation)
    hears: ClassVar[bool] = False  # its input is audio at the template's {audio} (a speech encoder-decoder)
    caches_prompt: ClassVar[bool] = False  # can score rows after past keys/values (a server's prompt cache)
    # a prefix in every attention layer: does the input continue its positions (as after a cache of that length)?
    prefix_shifts_positions: ClassVar[bool] = False
    peft_task_type: ClassVar[str | None] = None  # where PEFT's prompt-learning adapters put the prompt the same way
    lora_targets: ClassVar[tuple[str, ...] | None] = None  # LoRA's modules where PEFT has no default for the model type
    source_padding_side: ClassVar[str] = "left"  # of generation sources, so every row's next token is at the right edge
    generated_from: ClassVar[int] = 0  # where generated tokens start in a row of generate()'s output
    target_takes_trailing_space: ClassVar[bool] = False  # "Headline: " + "words" is written "Headline:" + " words"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params

    # what the renderer writes into the mask slot (one token)
    def placeholder_id(self) -> int:
        return self.pad_id

    def leading_space(self) -> bool:
        return True

    def reserve(self, words: list[list[int]]) -> int:
        """Extra tokens to keep free in the encoder input for the longest label word."""
        return max(len(w) for w in words) - 1

    def fast_ok(self, words: list[list[int]], template_tail_empty: bool) -> bool:
        return all(len(w) == 1 for w in words)

    def renderer_options(self, template) -> dict:
        """Keyword arguments for the template's ``Renderer`` beyond the tokenizer's defaults (a speech family's
        ``{audio}`` tokens and specials)."""
        return {}

    def input_kwargs(self, embeds: torch.Tensor, attention_mask: torch.Tensor, *, prefix_length: int = 0, batch=None) -> dict:
        """The model's keyword arguments for input embeddings; positions continue after a prefix of ``prefix_length``
        keys/values where this family's positions do (``prefix_shifts_positions``). ``batch``: the rows they come
        from, for what else a family feeds its model (a speech family's audio features)."""
        kw = dict(inputs_embeds=embeds, attention_mask=attention_mask)
        if self.takes_position_ids:
            shift = prefix_length if self.prefix_shifts_positions else 0
            kw["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0) + shift
        return kw

    # ---- classification ------------------------------------------------------------------------
    def build(self, rendered: list[Rendered], words: list[list[int]], *, fast: bool, padding_side: str,
              shared_context: bool = True) -> Rows:
        """Model rows for ``rendered`` examples and label ``words``. ``fast``: single-token words read at one
        position. Otherwise one row per (example, word) is scored by likelihood; where ``shared_context`` and the
        family can, the part every word of an example shares is run once (a server merging rows of several prompts
        asks for one row per (example, word) instead)."""
        raise NotImplementedError

    def word_scores(self, inputs: dict, rows: Rows, past: PromptCache | None = None) -> torch.Tensor:
        """(n_examples, W) scores from the model's ``inputs`` (:meth:`input_kwargs`, as a method's ``model_inputs``
        returns them); in the fast path, logits up to a per-row constant. ``past``: see ``caches_prompt``."""
        raise NotImplementedError

    def prompt_kv(self, embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per attention layer, the keys/values of a prompt prefix (1, P, hidden) run alone, to reuse as ``past``."""
        return None

    def generate_after(self, embeds: torch.Tensor, attention_mask: torch.Tensor, past: PromptCache, *, beams: int = 1) -> dict:
        """``generate()``'s inputs for left-padded rows continuing each row's cached prefix (families that
        ``caches_prompt``)."""
        raise NotImplementedError(f"{self.name} keeps no prompt cache")

    # ---- generation ----------------------------------------------------------------------------
    def _no_generation(self):
        return BackboneError(f"a {self.name} model does not generate text", where="model.family",
                             fix="use a causal-lm (e.g. smollm2-135m) or a seq2seq model (T5, BART) for generation")

    def target_batch(self, rendered: list[Rendered], targets: list[list[int]]) -> GenBatch:
        """Teacher-forced rows: sources and targets, right-padded, the loss only on target tokens."""
        raise self._no_generation()

    def source_batch(self, rendered: list[Rendered]) -> GenBatch:
        """Sources only, padded on ``source_padding_side``, for ``generate``."""
        ids = [r.ids for r in rendered]
        side = self.source_padding_side
        return GenBatch(pad(ids, self.pad_id, side), pad([r.soft for r in rendered], -1, side), mask_of(ids, side))

    def token_loss(self, inputs: dict, batch: GenBatch) -> tuple[torch.Tensor, int]:
        """(sum of target-token cross-entropies, number of target tokens)."""
        raise self._no_generation()

    def generate_kwargs(self) -> dict:
        """The special tokens transformers' ``GenerationConfig`` needs for this family."""
        raise self._no_generation()

    def generate(self, inputs: dict, **kwargs) -> torch.Tensor:
        """transformers' ``generate`` on a method's ``model_inputs``; rows of token ids, the new ones from
        :meth:`generated_width` on."""
        return self.model.generate(**inputs, **kwargs)

    def generated_width(self, inputs: dict) -> int:
        """Where the generated tokens start in the rows :meth:`generate` returns."""
        return self.generated_from

    # ---- shared helpers ----
    def probe(self, ids: torch.Tensor):
        """Run the model on token ids (1, T) alone; used to find attention layers and to read their keys/values."""
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids))

    @contextmanager
    def output_layer_at(self, index):
        """While inside, the model's output layer (``get_output_embeddings``) computes only at ``hidden[index]``:
        the logits a forward returns are those positions' only. A forward pre-hook, removed on exit; what the model
        does after the layer (a bias such as BART's, soft-capping) applies unchanged."""
        head = self.model.get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda module, args: (args[0][index], *args[1:]))
        try:
            yield
        finally:
            handle.remove()

    def _read_index(self, rows: Rows, device) -> tuple:
        """Where the output layer is needed: the read position of each row (fast) or its target positions."""
        ar = torch.arange(rows.input_ids.shape[0], device=device)
        if rows.read_pos is not None:
            return ar, rows.read_pos.to(device)
        return ar[:, None], rows.target_pos.clamp_min(0).to(device)

    def _scores_at(self, logits: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Scores from logits taken at :meth:`_read_index` (R, V) or (R, L, V)."""
        if rows.read_pos is not None:
            return logits[:, rows.word_ids].float()
        return self._general_scores(logits, rows)

    def _general_scores(self, logits: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Sum of target-token log-probs per row, reshaped to (n_examples, W); ``logits`` (R, L, V) are taken at the
        rows' target positions."""
        tgt = rows.target_ids
        logp = logits.float().log_softmax(-1)
        lp = logp.gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1).masked_fill(tgt < 0, 0.0)
        return lp.sum(-1).view(rows.n_examples, -1)
