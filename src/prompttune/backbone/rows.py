"""Model rows: the padded tensors one family feeds its model for a batch of rendered examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

class TensorBatch:
    """A dataclass of a batch's tensors (and other fields) that moves to a device in one call."""

    def to(self, device):
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self


@dataclass
class Rows(TensorBatch):
    input_ids: torch.Tensor  # (R, T) soft positions hold a placeholder id
    soft_index: torch.Tensor  # (R, T) row of the soft table, -1 elsewhere
    attention_mask: torch.Tensor  # (R, T)
    n_examples: int
    # fast path: R == n_examples, read one position per row, score single-token words
    read_pos: torch.Tensor | None = None  # (R,)
    word_ids: torch.Tensor | None = None  # (W,)
    # general path: R == n_examples * W, targets scored by log-likelihood
    target_pos: torch.Tensor | None = None  # (R, L) positions (in decoder for seq2seq) whose logits predict targets
    target_ids: torch.Tensor | None = None  # (R, L), -100 = padding
    decoder_input_ids: torch.Tensor | None = None  # (R, Td) seq2seq only
    decoder_attention_mask: torch.Tensor | None = None
    # shared-context path (causal): rows[:n_examples] are each example's context up to the mask (left-padded), run
    # once; rows[n_examples:] (one per example and word, right-padded, ``continuation_width`` wide) continue it with the
    # word and the template's tail. ``word_ids`` are then the words' first tokens, read at the context's last position;
    # ``target_ids`` (n_examples * W, L) the tokens after them, predicted by the continuation rows.
    continuation_width: int | None = None
    # speech: each example's log-mel features (n_examples, mels, frames) and, per row, the example it hears
    input_features: torch.Tensor | None = None
    audio_rows: torch.Tensor | None = None  # (R,)
    audio_keys: list[str] | None = None  # per example: what it hears (a path, or a hash of the samples)


def pad(seqs: Sequence[Sequence[int]], value: int, side: str, width: int | None = None) -> torch.Tensor:
    """(len(seqs), T) with each sequence on ``side``; T is the longest (at least 1) or ``width``."""
    T = max((len(s) for s in seqs), default=0) if width is None else width
    out = torch.full((len(seqs), max(T, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "left":
            out[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def pack(ids: list[list[int]], soft: list[list[int]], pad_id: int, side: str):
    """Pad ids/soft rows; return tensors and each row's left offset (so positions can be shifted)."""
    input_ids = pad(ids, pad_id, side)
    soft_index = pad(soft, -1, side)
    lengths = torch.tensor([len(s) for s in ids])
    T = input_ids.shape[1]
    ar = torch.arange(T)
    offset = (T - lengths) if side == "left" else torch.zeros_like(lengths)
    attention = ((ar[None, :] >= offset[:, None]) & (ar[None, :] < (offset + lengths)[:, None])).long()
    return input_ids, soft_index, attention, offset


def scored_rows(ids, soft, tpos, tids, n_examples: int, pad_id: int, side: str) -> Rows:
    """Rows whose targets are scored by likelihood; target positions shift with left padding."""
    input_ids, soft_index, attention, offset = pack(ids, soft, pad_id, side)
    tpos_t = pad(tpos, -1, "right")
    tpos_t = torch.where(tpos_t >= 0, tpos_t + offset[:, None], tpos_t)
    return Rows(input_ids, soft_index, attention, n_examples, target_pos=tpos_t, target_ids=pad(tids, -100, "right"))



@dataclass
class GenBatch(TensorBatch):
    """Model rows of a generation batch. ``labels`` is -100 wherever no target token is predicted; ``n_targets``
    counts the target tokens the loss is a mean over."""

    input_ids: torch.Tensor
    soft_index: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    decoder_input_ids: torch.Tensor | None = None
    decoder_attention_mask: torch.Tensor | None = None
    n_targets: int = 0
    input_features: torch.Tensor | None = None  # speech: each row's log-mel features (R, mels, frames)
    audio_keys: list[str] | None = None


def mask_of(seqs: Sequence[Sequence[int]], side: str) -> torch.Tensor:
    return pad([[1] * len(s) for s in seqs], 0, side)
