"""RLPrompt (Deng et al. 2022): discrete prompt tokens found by reinforcement learning, with forward passes only.

The template gets a fixed number of slots (its ``{soft}`` placeholders, or ``num_tokens`` in front when it has none).
A policy, one row of logits per slot over a restricted vocabulary (the first ``candidates`` whole-word tokens of the
tokenizer), samples ``samples`` prompts per step; each is scored by the frozen model on a batch of training examples
(reward: the mean class margin, log p(gold) - max log p(other) clipped to [-20, 20], or the accuracy), and REINFORCE updates the logits
with a moving-average baseline, advantages normalised by their moving spread, and an entropy bonus. The backbone gets
no gradient, so a black-box model that only returns label-word scores would do.

Every ``eval_every`` steps the policy's most likely prompt is scored on dev (the first candidate is the starting
prompt) and the best is kept, as the gradient trainer does. The result is a hard prompt: token ids saved in
``prompt.safetensors`` and, readable, the template with the tokens written in (``prompt_text`` in ``prompt.json``).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..template import Soft, Template, segment_text
from ..schemas import RLPromptOptions
from .base import Method


class ReinforcePolicy(nn.Module):
    """Independent categorical distributions, one per slot; REINFORCE with a moving-average baseline, advantages
    normalised by a moving average of their spread (so the reward's scale does not set the step size)."""

    def __init__(self, slots: int, choices: int, *, baseline_decay: float = 0.9, entropy: float = 0.01):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(slots, choices))
        self.baseline_decay, self.entropy_weight = baseline_decay, entropy
        self.baseline: float | None = None
        self.variance: float | None = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = self.logits.detach().softmax(-1)
        return torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, slots)

    def greedy(self) -> torch.Tensor:
        return self.logits.detach().argmax(-1)

    def loss(self, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Policy-gradient loss for sampled ``actions`` (n, slots) with ``rewards`` (n,); updates the baseline."""
        rewards = rewards.detach().float()
        mean, d = float(rewards.mean()), self.baseline_decay
        self.baseline = mean if self.baseline is None else d * self.baseline + (1 - d) * mean
        spread = float(((rewards - self.baseline) ** 2).mean())
        self.variance = spread if self.variance is None else d * self.variance + (1 - d) * spread
        adv = (rewards - self.baseline) / math.sqrt(self.variance + 1e-8)
        logp = self.logits.log_softmax(-1)
        chosen = logp.gather(1, actions.T).T.sum(-1)  # (n,)
        entropy = -(logp.exp() * logp).sum(-1).sum()
        return -(adv * chosen).mean() - self.entropy_weight * entropy


def reinforce(policy: ReinforcePolicy, reward_fn: Callable[[torch.Tensor], torch.Tensor], *, steps: int, samples: int,
              lr: float, seed: int = 0, on_step: Callable[[int, torch.Tensor], None] | None = None) -> list[float]:
    """Run ``steps`` policy-gradient updates; ``reward_fn`` maps actions (samples, slots) to rewards (samples,).
    Returns the mean reward of each step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    means = []
    for step in range(1, steps + 1):
        actions = policy.sample(samples, gen)
        rewards = reward_fn(actions)
        loss = policy.loss(actions, rewards)
        opt.zero_grad()
        loss.backward()
        opt.step()
        means.append(float(rewards.mean()))
        if on_step is not None:
            on_step(step, rewards)
    return means


def word_tokens(tokenizer, n: int) -> list[int]:
    """The first ``n`` token ids (lower ids: earlier merges, more frequent) that are a whole alphabetic word: a
    word-initial token (" word") for tokenizers that mark word starts with a space, else any alphabetic token
    ("##" pieces are not alphabetic)."""
    special = set(tokenizer.all_special_ids)
    pieces = [(i, tokenizer.decode([i])) for i in range(len(tokenizer)) if i not in special]

    def pick(word_start: bool) -> list[int]:
        out, seen = [], set()
        for i, text in pieces:
            word = text.strip()
            if len(word) < 2 or not word.isalpha() or word.lower() in seen or (word_start and not text.startswith(" ")):
                continue
            seen.add(word.lower())
            out.append(i)
            if len(out) >= n:
                break
        return out

    spaced = pick(True)
    return spaced if len(spaced) >= min(n, 2) else pick(False)


class RLPrompt(Method):
    name = "rl-prompt"
    Options = RLPromptOptions
    default_lr = 0.05
    generates = False  # rewarded by label words
    servable = True
    shares_batch = True  # its prompt is vocabulary rows written into the input
    description = "RLPrompt: a policy picks discrete prompt tokens, rewarded by the frozen model (forward passes only)"

    def prepare_template(self, template: Template) -> Template:
        return template if template.has_soft else template.with_soft_prefix(self.options.num_tokens)

    def attach(self, backbone, template: Template, verbalizer, *, init: bool = True, seed: int = 0) -> None:
        if not backbone.family.uses_verbalizer:
            raise ConfigError(f"rl-prompt scores label words at a mask; {backbone.name!r} is loaded as {backbone.family.name}",
                              where="method.name", fix="use a causal, masked or encoder-decoder LM")
        self.set_trainable(backbone)
        tok = backbone.tokenizer
        n = template.n_soft(tok)
        cands = word_tokens(tok, self.options.candidates)
        if len(cands) < 2:
            raise ConfigError("the tokenizer has fewer than 2 whole-word tokens to build prompts from", where="method.candidates",
                              fix="use another method for this model")
        self.policy = ReinforcePolicy(n, len(cands), baseline_decay=self.options.baseline_decay, entropy=self.options.entropy)
        self.register_buffer("candidates", torch.tensor(cands, dtype=torch.long))
        start = torch.zeros(n, dtype=torch.long)
        for g in template.soft_groups(tok):  # {soft:words} start the slots from those words where they are candidates
            if g.init:
                ids = tok(" " + g.init.strip(), add_special_tokens=False)["input_ids"]
                for j in range(g.count):
                    hit = (self.candidates == ids[j % len(ids)]).nonzero()
                    if len(hit):
                        start[g.start + j] = hit[0, 0]
                        with torch.no_grad():
                            self.policy.logits[g.start + j, hit[0, 0]] = 2.0
        self.register_buffer("tokens", self.candidates[start].clone())
        self._sampled: torch.Tensor | None = None
        self.to(backbone.model.get_input_embeddings().weight.device)

    def soft_table(self, backbone):
        """The chosen tokens' embeddings (while rewarding: the sampled prompts', one block of rows each)."""
        return backbone.embed(self._sampled if self._sampled is not None else self.tokens)

    def trainable_parameters(self, backbone):
        return list(self.policy.parameters())

    def hard_template(self, pm) -> str:
        """The template with the chosen tokens written in."""
        tok = pm.backbone.tokenizer
        out, k = [], 0
        for seg in pm.template.segments:
            if isinstance(seg, Soft):
                rows = pm.renderer.soft_rows[k]
                k += 1
                out.append(tok.decode(self.tokens[rows].tolist()).replace("{", "{{").replace("}", "}}"))
            else:
                out.append(segment_text(seg))
        return "".join(out)

    # ---- its own fit: policy gradient instead of backpropagation through the model -------------------
    @torch.no_grad()
    def rewards(self, pm, rows, actions: torch.Tensor) -> torch.Tensor:
        """Reward of each sampled prompt (actions: (S, slots) candidate indices) on ``rows``, in one batched forward."""
        S, n = actions.shape
        # S copies of every example, copy s reading sampled prompt s (soft rows s*n ...); the family lays out the rows
        rendered = [pm.render(r) for r in rows]
        copies = [replace(r, soft=[i + s * n if i >= 0 else i for i in r.soft]) for s in range(S) for r in rendered]
        big = pm.backbone.family.build(copies, pm.word_ids, fast=pm.fast, padding_side=pm.padding_side)
        self._sampled = self.candidates[actions].reshape(-1)
        was_training = pm.training
        pm.eval()  # no dropout: the reward is the model's prediction
        try:
            logp = pm(big, calibrate=False).float().view(S, len(rows), -1)
        finally:
            self._sampled = None
            pm.train(was_training)
        y = pm.labels_tensor(rows).to(logp.device)
        gold = logp.gather(-1, y.view(1, -1, 1).expand(S, -1, 1)).squeeze(-1)
        if self.options.reward == "accuracy":
            return (logp.argmax(-1) == y).float().mean(-1).cpu()
        other = logp.scatter(-1, y.view(1, -1, 1).expand(S, -1, 1), float("-inf")).max(-1).values
        return (gold - other).clamp(-20, 20).mean(-1).cpu()

    def fit(self, pm, train_rows, dev_rows, cfg):
        from tqdm.auto import tqdm

        from ..tasks import task_of
        from ..train import TrainResult, dev_score, steps_for

        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        rng = random.Random(cfg.seed)
        max_steps = cfg.max_steps or steps_for(len(train_rows), cfg.batch_size)
        eval_every = cfg.eval_every or max(10, math.ceil(len(train_rows) / cfg.batch_size))
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr or self.default_lr)
        history: list[dict] = []
        best: dict = {"score": None, "tokens": self.tokens.clone(), "step": 0, "dev": None}
        bad = 0

        task = task_of(pm)

        def check_dev(step: int) -> None:
            nonlocal bad
            dev = task.evaluate_dev(dev_rows, cfg)
            rec = {k: dev[k] for k in task.dev_metrics}
            history.append({"step": step, **rec, "prompt": self.hard_template(pm)})
            score = dev_score(dev, cfg.metric)
            if best["score"] is None or score > best["score"]:
                best.update(score=score, tokens=self.tokens.clone(), step=step, dev=rec)
                bad = 0
            else:
                bad += 1

        if dev_rows:
            check_dev(0)
        order: list[int] = []
        bar = tqdm(total=max_steps, desc="train rl-prompt", unit="step", disable=not cfg.progress, dynamic_ncols=True)
        step, stopped = 0, False
        while step < max_steps:
            if len(order) < cfg.batch_size:
                more = list(range(len(train_rows)))
                rng.shuffle(more)
                order += more
            rows = [train_rows[i] for i in order[: cfg.batch_size]]
            del order[: cfg.batch_size]
            actions = self.policy.sample(self.options.samples, gen)
            rewards = self.rewards(pm, rows, actions.to(self.candidates.device))
            loss = self.policy.loss(actions.to(self.policy.logits.device), rewards.to(self.policy.logits.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            with torch.no_grad():
                self.tokens.copy_(self.candidates[self.policy.greedy().to(self.candidates.device)])
            history.append({"step": step, "reward": float(rewards.mean()), "reward_max": float(rewards.max())})
            bar.update(1)
            bar.set_postfix(reward=f"{float(rewards.mean()):.3f}")
            if dev_rows and (step % eval_every == 0 or step == max_steps):
                check_dev(step)
                if bad >= cfg.patience and step < max_steps:
                    stopped = True
                    break
        bar.close()
        if dev_rows:
            self.tokens.copy_(best["tokens"])
        self.options.prompt_text = self.hard_template(pm)
        return TrainResult(steps=step, best_step=best["step"] if dev_rows else step, best_dev=best["dev"], history=history,
                           seconds=time.perf_counter() - start, stopped_early=stopped)
