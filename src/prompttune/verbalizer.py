"""Verbalizers: label -> label words, and label-word scores -> one score per class.

A class may have several words; each word may be several tokens. A word's score is the log-likelihood
of all of its tokens (the backbone family decides how), a class's score is the log of the mean
probability of its words, and class scores are normalised over the classes. Contextual calibration
(Zhao et al. 2021) subtracts the log class probabilities the prompt gives a content-free input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .errors import VerbalizerError

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def prediction(labels: Sequence[str], probs) -> dict:
    """One answer: the most probable label and every label's probability (rounded to 6 places)."""
    return {"label": labels[int(probs.argmax())], "probabilities": {l: round(float(v), 6) for l, v in zip(labels, probs)}}


class Verbalizer:
    def __init__(self, words: Mapping[str, str | Sequence[str]] | Sequence[str], *, calibration: Sequence[float] | None = None):
        if isinstance(words, (list, tuple)):
            words = {str(w): [str(w)] for w in words}
        if not isinstance(words, Mapping) or not words:
            raise VerbalizerError("a verbalizer maps each label to one or more label words; got nothing usable",
                                  fix="write e.g. {negative: ' terrible', positive: [' great', ' good']}")
        self.words: dict[str, list[str]] = {}
        for label, ws in words.items():
            if not isinstance(ws, (str, list, tuple)):
                raise VerbalizerError(f"label {label!r} maps to {ws!r}, not a word or a list of words", where="verbalizer",
                                      fix="write e.g. {negative: ' terrible', positive: [' great', ' good']}")
            ws = [ws] if isinstance(ws, str) else list(ws)
            if not ws or any(not isinstance(w, str) or not w.strip() for w in ws):
                raise VerbalizerError(f"label {label!r} has an empty or non-text label word", where="verbalizer",
                                      fix="give each label at least one non-empty word")
            self.words[str(label)] = ws
        owner: dict[str, str] = {}
        for label, ws in self.words.items():
            for w in ws:
                other = owner.setdefault(w.strip(), label)
                if other != label:
                    raise VerbalizerError(f"labels {other!r} and {label!r} share the label word {w.strip()!r}, so the model's "
                                          "score for it cannot tell them apart", where="verbalizer",
                                          fix="give each label words of its own")
        self.labels: list[str] = list(self.words)
        self.calibration: list[float] | None = list(calibration) if calibration is not None else None

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec) -> "Verbalizer":
        """From a dict, a list of labels (each its own word), or a path to a JSON file."""
        if isinstance(spec, Verbalizer):
            return spec
        if isinstance(spec, (str, Path)) and str(spec).endswith(".json"):
            path = Path(spec)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise VerbalizerError(f"verbalizer file {path} does not exist", fix="check the path") from None
            except OSError as e:
                raise VerbalizerError(f"verbalizer file {path} cannot be read ({e})", fix="check the path") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise VerbalizerError(f"verbalizer file {path} is not valid UTF-8 JSON ({e})",
                                      fix='write a JSON object such as {"negative": ["bad"], "positive": ["good"]}') from None
            return cls(data)
        return cls(spec)

    def to_dict(self) -> dict:
        return {"words": self.words, "calibration": self.calibration}

    @classmethod
    def from_dict(cls, d: dict) -> "Verbalizer":
        return cls(d["words"], calibration=d.get("calibration"))

    # ---- checks ---------------------------------------------------------------------------
    def check_classes(self, *, where: str = "verbalizer") -> None:
        """A classifier needs two classes at least: with one, every answer is right and accuracy means nothing."""
        if len(self.labels) < 2:
            raise VerbalizerError(f"the verbalizer has one label ({self.labels[0]!r}); with one class every answer is "
                                  "right and accuracy means nothing", where=where,
                                  fix="give every label of the task its words, e.g. {negative: bad, positive: good}")

    def check_labels(self, labels: Sequence[str], *, where: str = "data") -> None:
        unknown = sorted(set(map(str, labels)) - set(self.labels))
        if unknown:
            raise VerbalizerError(
                f"labels {unknown[:5]} occur in the {where} but not in the verbalizer (which has {self.labels})",
                where=where, fix="add them to the verbalizer, or fix the label column")

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(str(label))
        except ValueError:
            raise VerbalizerError(f"label {label!r} is not in the verbalizer {self.labels}",
                                  fix="add it to the verbalizer") from None

    def encode(self, tokenizer, *, leading_space: bool) -> list[list[list[int]]]:
        """Token ids of every word of every class. ``leading_space`` prefixes a space to words that lack one
        (the template had whitespace before {mask}, which belongs to the word)."""
        unk = getattr(tokenizer, "unk_token_id", None)
        out = []
        for label, ws in self.words.items():
            enc = []
            for w in ws:
                text = (" " + w) if leading_space and not w.startswith((" ", "\u3000")) else w
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if not ids or (unk is not None and unk in ids):
                    raise VerbalizerError(f"label word {w!r} of label {label!r} cannot be encoded by this tokenizer (got {ids})",
                                          where="verbalizer", fix="choose a word in the model's vocabulary")
                enc.append(list(ids))
            out.append(enc)
        return out

    # ---- scoring --------------------------------------------------------------------------
    def class_log_probs(self, word_scores: torch.Tensor, word_class: torch.Tensor, *, calibrate: bool = True) -> torch.Tensor:
        """(B, W) log-scores of every word -> (B, C) log-probabilities over classes."""
        C = len(self.labels)
        counts = torch.bincount(word_class, minlength=C).to(word_scores.dtype)
        # log mean_w p(w) per class, with a scatter-style logsumexp (no Python loop over rows).
        m = word_scores.max(dim=1, keepdim=True).values.detach()
        exp = (word_scores - m).exp()
        per_class = torch.zeros(word_scores.shape[0], C, dtype=word_scores.dtype, device=word_scores.device)
        per_class = per_class.index_add(1, word_class, exp)
        scores = per_class.clamp_min(1e-30).log() + m - counts.log()
        if calibrate and self.calibration is not None:
            scores = scores - torch.tensor(self.calibration, dtype=scores.dtype, device=scores.device)
        return scores.log_softmax(dim=-1)

    def set_calibration(self, content_free_log_probs: torch.Tensor) -> None:
        """Contextual calibration: the mean class probabilities of content-free inputs become the bias."""
        p = content_free_log_probs.exp().mean(dim=0)
        p = p / p.sum()
        self.calibration = [math.log(max(float(x), 1e-12)) for x in p]
