"""Templates: where the input fields, the mask slot and the soft tokens sit in the model's input.

Syntax (parsed once by a small hand-written scanner: no ``eval``, no Jinja, nothing is executed):

- literal text, any Unicode: ``请判断以下文本是正面还是负面：{text}``
- ``{field}``: an input column, e.g. ``{text}``, ``{premise}``, ``{hypothesis}``
- ``{mask}``: the slot the verbalizer scores (a causal LM predicts it as the next tokens)
- ``{soft}``, ``{soft*20}``: trainable soft tokens (1 or 20 of them)
- ``{soft:Classify the sentiment}``: soft tokens initialised from those words' embeddings
  (as many tokens as the words take); ``{soft*8:sentiment}`` gives 8 tokens cycling those words
- ``{soft#q*4}``: a named group; every ``{soft#q...}`` in the template shares the same parameters
- ``{{`` and ``}}``: literal braces
- ``{audio}`` (speech models only): where the clip (a ``.wav``/``.flac`` path or an array) is heard, as Whisper's
  start-of-transcript tokens; text before it is the previous-text prompt, after it the start of what is said.
  ``{audio:zh}``, ``{audio:fr translate}``: the clip's language and task (multilingual models; default en, transcribe)

Rendering turns one example into token ids, the mask position and, per position, the index of the
soft-token row to write there (-1 elsewhere). Only input fields are ever truncated (longest first);
template text, soft tokens and the mask always survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

from .errors import TemplateError, check_text

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
_SOFT = re.compile(r"soft(?:#(?P<name>[A-Za-z0-9_\-]+))?(?:\*(?P<count>[0-9]+))?(?::(?P<init>.*))?\Z", re.S)
_SOFT_START = re.compile(r"soft(?![A-Za-z0-9_\-])")  # {soft...} but not a field such as {software}
MAX_SOFT_TOKENS = 4096
AUDIO_FIELD = "audio"  # the field a speech family hears instead of reading
_AUDIO_OPTION = re.compile(r"(?P<language>[a-z]{2,3})(?:\s+(?P<task>transcribe|translate))?\Z")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Field:
    name: str
    option: str | None = None  # {audio:zh translate}: what follows ':' (only the audio field takes one)


@dataclass(frozen=True)
class Mask:
    pass


@dataclass(frozen=True)
class Soft:
    """A run of soft tokens. ``count`` None means "as many as ``init`` tokenises to" (or 1)."""

    count: int | None
    init: str | None = None
    name: str | None = None


Segment = Union[Text, Field, Mask, Soft]


def _column_error(template: str, column: int, what: str, fix: str) -> TemplateError:
    pointer = f"\n  {template}\n  {' ' * column}^"
    return TemplateError(f"{what}{pointer}", where=f"template column {column + 1}", fix=fix)


def parse(template: str) -> list[Segment]:
    """Parse template text into segments; errors name the column where it broke."""
    return [seg for _, seg in _parse_columns(template)]


def _parse_columns(template: str) -> list[tuple[int, Segment]]:
    """``parse``, with the 0-based column where each segment starts."""
    if not isinstance(template, str):
        raise TemplateError(f"a template must be text, got {type(template).__name__}", fix="quote the template")
    segments: list[tuple[int, Segment]] = []
    buf: list[str] = []
    buf_start = 0
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if not buf:
            buf_start = i
        if ch == "{":
            if i + 1 < n and template[i + 1] == "{":
                buf.append("{")
                i += 2
                continue
            end = template.find("}", i + 1)
            nested = template.find("{", i + 1)
            if end < 0:
                raise _column_error(template, i, "this '{' is never closed", "close it with '}', or write '{{' for a literal brace")
            if 0 <= nested < end:
                raise _column_error(template, nested, "a '{' inside a placeholder", "close the previous placeholder first, or write '{{' for a literal brace")
            if buf:
                segments.append((buf_start, Text("".join(buf))))
                buf = []
            segments.append((i, _placeholder(template, i, template[i + 1 : end])))
            i = end + 1
        elif ch == "}":
            if i + 1 < n and template[i + 1] == "}":
                buf.append("}")
                i += 2
                continue
            raise _column_error(template, i, "a '}' with no '{' before it", "write '}}' for a literal brace")
        else:
            buf.append(ch)
            i += 1
    if buf:
        segments.append((buf_start, Text("".join(buf))))
    if not segments:
        raise TemplateError("the template is empty", fix="write e.g. 'Review: {text} Sentiment: {mask}'")
    _check_soft_groups(template, segments)
    return segments


def _placeholder(template: str, start: int, body: str) -> Segment:
    stripped = body.strip()
    if stripped == "mask":
        return Mask()
    if _SOFT_START.match(stripped):
        m = _SOFT.match(stripped)
        if not m:
            raise _column_error(template, start, f"cannot read soft-token placeholder {{{body}}}",
                                "write {soft}, {soft*20}, {soft:init words}, {soft*8:init words} or {soft#name*4}")
        count = m.group("count")
        init = m.group("init")
        if count is not None:
            digits = count.lstrip("0") or "0"
            value = int(digits) if len(digits) <= len(str(MAX_SOFT_TOKENS)) else MAX_SOFT_TOKENS + 1
            if not 1 <= value <= MAX_SOFT_TOKENS:
                shown = count if len(count) <= 12 else count[:12] + "..."
                raise _column_error(template, start, f"{shown} soft tokens", f"use between 1 and {MAX_SOFT_TOKENS}")
            count = value
        if init is not None and not init.strip():
            raise _column_error(template, start, "{soft:} with no init words", "write words after ':' or drop the ':'")
        return Soft(count=count, init=init.strip() if init else None, name=m.group("name"))
    if stripped.startswith(AUDIO_FIELD + ":"):
        option = " ".join(stripped[len(AUDIO_FIELD) + 1:].split())
        if not _AUDIO_OPTION.match(option):
            raise _column_error(template, start, f"cannot read the audio option {{{body}}}", "write {audio:<language>} or "
                                "{audio:<language> translate} with a Whisper language code, e.g. {audio:zh} or {audio:fr translate}")
        return Field(AUDIO_FIELD, option)
    if not stripped:
        raise _column_error(template, start, "an empty placeholder {}", "name an input field, e.g. {text}, or write '{{}}' for literal braces")
    if not _NAME.match(stripped):
        raise _column_error(template, start, f"{{{body}}} is not a field name",
                            "field names are letters, digits, '_' and '-' (e.g. {text}); write '{{' for a literal brace")
    return Field(stripped)


def _check_soft_groups(template: str, segments: list[tuple[int, Segment]]) -> None:
    counts: dict[str, int] = {}
    for start, seg in segments:
        if isinstance(seg, Soft) and seg.name is not None and seg.count is not None:
            first = counts.setdefault(seg.name, seg.count)
            if first != seg.count:
                raise _column_error(template, start, f"soft group #{seg.name} is used with {first} and {seg.count} tokens",
                                    "give every use of a named soft group the same count")


@dataclass
class Rendered:
    """One example rendered to tokens. ``mask`` is the index of the mask slot in ``ids`` (or None).

    The mask slot holds one placeholder token; families replace it with what they need
    (the label word for a causal LM, mask tokens for a masked LM, a sentinel for T5).
    """

    ids: list[int]
    soft: list[int]
    mask: int | None
    truncated: bool = False
    audio: object = None  # the {audio} field's value (a path or an array), for a speech family


@dataclass
class SoftGroup:
    """Rows ``start : start + count`` of the soft-prompt table, and the words to initialise them from."""

    start: int
    count: int
    init: str | None


@dataclass
class Template:
    """A parsed template bound to a tokenizer for rendering."""

    text: str
    segments: list[Segment] = field(init=False)

    def __post_init__(self) -> None:
        self.segments = parse(self.text)

    # ---- structure -------------------------------------------------------------------------
    @property
    def fields(self) -> list[str]:
        seen: list[str] = []
        for seg in self.segments:
            if isinstance(seg, Field) and seg.name not in seen:
                seen.append(seg.name)
        return seen

    @property
    def n_masks(self) -> int:
        return sum(isinstance(s, Mask) for s in self.segments)

    @property
    def has_soft(self) -> bool:
        return any(isinstance(s, Soft) for s in self.segments)

    def with_soft_prefix(self, count: int) -> "Template":
        """The same template with ``{soft*count}`` in front (PEFT-style prompt tuning)."""
        return Template("{soft*%d}" % count + self.text)

    def soften(self) -> "Template":
        """The same prompt with its words as soft tokens initialised from those words.

        ``Review: {text}\nSentiment: {mask}`` becomes ``{soft:Review:} {text}\n{soft:Sentiment:} {mask}``: before any
        training it scores exactly as the hand-written prompt does, and tuning starts from there. Whitespace stays
        literal (it belongs to the neighbouring input and label word); text with braces stays literal."""
        out: list[str] = []
        for seg in self.segments:
            if isinstance(seg, Text):
                core = seg.text.strip()
                if not core or "{" in core or "}" in core:
                    out.append(segment_text(seg))
                    continue
                lead = seg.text[: len(seg.text) - len(seg.text.lstrip())]
                trail = seg.text[len(seg.text.rstrip()):]
                out.append(f"{lead}{{soft:{core}}}{trail}")
            else:
                out.append(segment_text(seg))
        return Template("".join(out))

    def check(self, *, needs_mask: bool, columns: Iterable[str] | None = None, where: str = "template") -> None:
        if needs_mask and self.n_masks == 0:
            raise TemplateError(f"the template {self.text!r} has no {{mask}} slot", where=where,
                                fix="add {mask} where the label word should go, e.g. '... Sentiment: {mask}'")
        if needs_mask and self.n_masks > 1:
            raise TemplateError(f"the template {self.text!r} has {self.n_masks} {{mask}} slots; classification scores exactly one",
                                where=where, fix="keep one {mask}; a multi-token label word is scored whole in one slot")
        if not self.fields:
            raise TemplateError(f"the template {self.text!r} has no input field", where=where,
                                fix="place the input with a field such as {text}")
        if columns is not None:
            columns = set(columns)
            missing = [f for f in self.fields if f not in columns]
            if missing:
                col = next(c for c, seg in _parse_columns(self.text) if isinstance(seg, Field) and seg.name == missing[0])
                raise _column_error(self.text, col, f"field {{{missing[0]}}} is not a column of the data (columns: {', '.join(sorted(columns)) or 'none'})",
                                    "rename the field to a column, or map it with data.columns: {%s: YOUR_COLUMN}" % missing[0])

    def check_generation(self, target: str, columns: Iterable[str] | None = None, where: str = "prompt.template") -> None:
        """A generation template places the source and has no {mask}; the target is not one of its fields."""
        if self.n_masks:
            raise TemplateError(f"the template {self.text!r} has a {{mask}}; a generation template places only the source",
                                where=where, fix="drop {mask}: the target is generated after the template (causal LM) or by the decoder (seq2seq)")
        if target in self.fields:
            raise TemplateError(f"the target field {{{target}}} is in the template, so the model would see the answer",
                                where=where, fix=f"remove {{{target}}} from the template; prompt.target names the field to generate")
        self.check(needs_mask=False, columns=columns, where=where)

    def soft_groups(self, tokenizer) -> list[SoftGroup]:
        """The distinct soft-token groups in order; named groups appear once."""
        groups: list[SoftGroup] = []
        named: dict[str, SoftGroup] = {}
        # A named group takes the count and init words given at any of its uses ({soft#q} ... {soft#q*4} is 4 rows).
        counts: dict[str, int] = {}
        inits: dict[str, str] = {}
        for seg in self.segments:
            if isinstance(seg, Soft) and seg.name is not None:
                if seg.count is not None:
                    counts.setdefault(seg.name, seg.count)
                if seg.init is not None:
                    inits.setdefault(seg.name, seg.init)
        start = 0
        for seg in self.segments:
            if not isinstance(seg, Soft):
                continue
            if seg.name is not None and seg.name in named:
                continue
            count, init = seg.count, seg.init
            if seg.name is not None:
                count, init = counts.get(seg.name, count), inits.get(seg.name, init)
            if count is None:
                count = len(tokenizer(init, add_special_tokens=False)["input_ids"]) if init else 1
                count = max(count, 1)
            g = SoftGroup(start, count, init)
            groups.append(g)
            if seg.name is not None:
                named[seg.name] = g
            start += count
        return groups

    def n_soft(self, tokenizer) -> int:
        return sum(g.count for g in self.soft_groups(tokenizer))


class Renderer:
    """Renders examples of one template with one tokenizer. Tokenises each literal+field run as a whole
    string, so text tokenises exactly as it would in running prose (no stray space tokens)."""

    def __init__(self, template: Template, tokenizer, *, max_length: int, placeholder_id: int,
                 soft_id: int | None = None, move_space_into_mask: bool = True, drop_mask: bool = False,
                 audio_ids: list[int] | None = None, specials: tuple[list[int], list[int]] | None = None):
        """``audio_ids``: the tokens the ``{audio}`` field renders as (a speech family's), its value kept in
        ``Rendered.audio``; None: ``{audio}`` is text like any field. ``specials``: the tokens before and after every
        rendering (default: those the tokenizer adds)."""
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.placeholder_id = placeholder_id
        self.soft_id = placeholder_id if soft_id is None else soft_id
        self.drop_mask = drop_mask
        self.audio_ids = None if audio_ids is None else list(audio_ids)
        self.prefix_special, self.suffix_special = specials if specials is not None else special_tokens_around(tokenizer)
        groups = template.soft_groups(tokenizer)
        self.n_soft = sum(g.count for g in groups)
        # Per Soft segment: the list of row indices it writes.
        self.soft_rows: list[list[int]] = []
        named: dict[str, list[int]] = {}
        it = iter(groups)
        for seg in template.segments:
            if isinstance(seg, Soft):
                if seg.name is not None and seg.name in named:
                    self.soft_rows.append(named[seg.name])
                    continue
                g = next(it)
                rows = list(range(g.start, g.start + g.count))
                if seg.name is not None:
                    named[seg.name] = rows
                self.soft_rows.append(rows)
        # The whitespace right before {mask} belongs to the label word (" positive"), not the prompt:
        # a BPE tokenizer would otherwise end the prompt on a lone space token.
        self.space_before_mask = False
        segs = list(template.segments)
        if move_space_into_mask:
            for k, seg in enumerate(segs):
                if isinstance(seg, Mask) and k > 0 and isinstance(segs[k - 1], Text):
                    t = segs[k - 1].text
                    if t != t.rstrip():
                        self.space_before_mask = True
                        segs[k - 1] = Text(t.rstrip())
        self._segments = segs
        fixed = sum(len(r) for r in self.soft_rows) + len(self.prefix_special) + len(self.suffix_special)
        if self.audio_ids is not None:
            fixed += len(self.audio_ids) * sum(isinstance(s, Field) and s.name == AUDIO_FIELD for s in segs)
        if fixed + (0 if drop_mask else template.n_masks) >= max_length:
            raise TemplateError(f"the template needs {fixed} tokens before any input, max_length is {max_length}",
                                where="template", fix="raise max_length or use fewer soft tokens")

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _assemble(self, values: Mapping[str, str]) -> Rendered:
        ids = list(self.prefix_special)
        soft = [-1] * len(ids)
        mask = None
        run: list[str] = []
        soft_k = 0

        def flush():
            if run:
                toks = self._tokenize("".join(run))
                ids.extend(toks)
                soft.extend([-1] * len(toks))
                run.clear()

        for seg in self._segments:
            if isinstance(seg, Text):
                run.append(seg.text)
            elif isinstance(seg, Field) and seg.name == AUDIO_FIELD and self.audio_ids is not None:
                flush()
                ids.extend(self.audio_ids)
                soft.extend([-1] * len(self.audio_ids))
            elif isinstance(seg, Field):
                run.append(values[seg.name])
            elif isinstance(seg, Soft):
                flush()
                rows = self.soft_rows[soft_k]
                soft_k += 1
                ids.extend([self.soft_id] * len(rows))
                soft.extend(rows)
            else:  # Mask
                flush()
                if self.drop_mask:
                    continue
                mask = len(ids) if mask is None else mask
                ids.append(self.placeholder_id)
                soft.append(-1)
        flush()
        ids.extend(self.suffix_special)
        soft.extend([-1] * len(self.suffix_special))
        return Rendered(ids, soft, mask)

    def render(self, example: Mapping[str, str], *, reserve: int = 0) -> Rendered:
        """Render one example. ``reserve`` tokens are kept free (e.g. for a multi-token label word)."""
        values: dict[str, str] = {}
        for name in self.template.fields:
            if name not in example:
                raise TemplateError(f"the example has no field {name!r} (it has: {', '.join(sorted(example))})",
                                    where="template", fix=f"add a {name!r} column or map one to it with data.columns")
            if name == AUDIO_FIELD and self.audio_ids is not None:
                continue  # heard, not read: never tokenised or truncated
            values[name] = str(example[name])
            check_text(values[name], f"field {name!r}")
        out = self._assemble(values)
        budget = self.max_length - reserve
        truncated = False
        # Cut the longest field by the overflow, re-render; repeat (tokenisation across joins may shift by a token).
        for _ in range(16):
            over = len(out.ids) - budget
            if over <= 0:
                break
            truncated = True
            lengths = {k: self._tokenize(v) for k, v in values.items()}
            longest = max(lengths, key=lambda k: len(lengths[k]), default=None)  # None: a template without fields
            if longest is None or not lengths[longest]:
                break
            toks = lengths[longest]
            keep = max(len(toks) - over, 0)
            values[longest] = cut_text(self.tokenizer, values[longest], toks, keep)
            out = self._assemble(values)
        if len(out.ids) > budget:
            raise TemplateError(f"cannot fit the example into max_length={self.max_length} by truncating fields",
                                where="template", fix="raise max_length")
        out.truncated = truncated
        if self.audio_ids is not None:
            out.audio = example[AUDIO_FIELD]
        return out


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] ... [SEP], ... </s>, BOS ...)."""
    probe = "\u2603"  # a character unlikely to merge with specials
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    if not bare:
        return [], []
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    return [], []


def cut_text(tokenizer, value: str, toks: list[int], keep: int) -> str:
    """The prefix of ``value`` spanned by its first ``keep`` tokens (``toks``: its tokens), cut at a character boundary.

    Decoding a token prefix would split characters that take several byte-level tokens (emoji, rare CJK)
    into U+FFFD, which re-encodes longer, so truncation never converged; offsets keep the original text."""
    if keep <= 0:
        return ""
    try:
        offsets = tokenizer(value, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except Exception:  # tokenizers without offsets (slow / Python backends)
        offsets = None
    if offsets is not None and len(offsets) == len(toks):
        end = offsets[keep - 1][1]
        if keep < len(offsets):
            end = min(end, offsets[keep][0])  # a character split over the cut is dropped whole
        if end < len(value):
            return value[:end]
    return tokenizer.decode(toks[:keep]).rstrip("\ufffd")


def segment_text(seg: Segment) -> str:
    if isinstance(seg, Text):
        return seg.text.replace("{", "{{").replace("}", "}}")
    if isinstance(seg, Field):
        return "{%s}" % (seg.name if seg.option is None else f"{seg.name}:{seg.option}")
    if isinstance(seg, Mask):
        return "{mask}"
    return "{soft%s%s%s}" % (f"#{seg.name}" if seg.name else "", f"*{seg.count}" if seg.count is not None else "",
                             f":{seg.init}" if seg.init else "")


def tail_is_empty(segments: Sequence[Segment]) -> bool:
    """True when nothing but whitespace follows the (first) mask: a causal LM can score it as the next token."""
    seen = False
    for seg in segments:
        if isinstance(seg, Mask):
            seen = True
        elif seen and not (isinstance(seg, Text) and not seg.text.strip()):
            return False
    return seen


def fill_mask(rendered: Rendered, fill: Sequence[int]) -> tuple[list[int], list[int], int]:
    """Replace the one-token mask placeholder by ``fill``; returns ids, soft rows, and where ``fill`` starts."""
    p = rendered.mask
    assert p is not None
    ids = rendered.ids[:p] + list(fill) + rendered.ids[p + 1 :]
    soft = rendered.soft[:p] + [-1] * len(fill) + rendered.soft[p + 1 :]
    return ids, soft, p
