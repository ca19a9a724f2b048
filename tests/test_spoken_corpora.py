"""Spoken corpora: espeak-ng reads a built-in text corpus aloud, once, into the cache; the same rows and voices on
every run; nothing half-written after a crash; clear errors for what cannot be made."""

from __future__ import annotations

import json
import os
import shutil
import importlib.util

import pytest

from conftest import run_cli
from prompttune.data import load_builtin
from prompttune.data import speech
from prompttune.data.speech import SAMPLE_RATE, speak, spoken_corpus, voice_for
from prompttune.errors import DataError


@pytest.fixture(autouse=True)
def needs_espeak(tmp_path, monkeypatch):
    ok = shutil.which("espeak-ng") and importlib.util.find_spec("soundfile") and importlib.util.find_spec("soxr")
    if not ok:
        if os.environ.get("PROMPTTUNE_REQUIRE_DEV") == "1":
            pytest.fail("PROMPTTUNE_REQUIRE_DEV=1 but espeak-ng / soundfile / soxr are missing (scripts/setup.sh --dev)")
        pytest.skip("espeak-ng, soundfile or soxr is not installed (scripts/setup.sh --dev)")
    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path / "cache"))


def test_a_spoken_corpus_is_the_text_corpus_read_aloud_at_16khz(tmp_path):
    import soundfile

    index = spoken_corpus("spoken-movie-reviews", "test", limit=3, progress=False)
    rows = [json.loads(x) for x in index.read_text().splitlines()]
    text = load_builtin("movie-reviews", "test")[:3]
    assert [r["text"] for r in rows] == [t["text"] for t in text]
    assert [r["label"] for r in rows] == [t["label"] for t in text]
    for r in rows:
        info = soundfile.info(r["audio"])
        assert info.samplerate == SAMPLE_RATE and info.channels == 1
        # a snippet of ~20 words takes seconds to say, not milliseconds and not minutes
        assert 1.0 < info.duration < 30.0
    assert index.parent.parent == tmp_path / "cache" / "speech"


def test_a_spoken_corpus_is_made_once_and_the_same_on_every_run(tmp_path):
    import soundfile

    index = spoken_corpus("spoken-django", "test", limit=2, progress=False)
    stamp = index.stat().st_mtime_ns
    first = soundfile.read(json.loads(index.read_text().splitlines()[0])["audio"])[0]
    assert spoken_corpus("spoken-django", "test", limit=2, progress=False) == index
    assert index.stat().st_mtime_ns == stamp  # reused
    shutil.rmtree(index.parent)
    again = spoken_corpus("spoken-django", "test", limit=2, progress=False)
    assert again == index
    assert (soundfile.read(json.loads(again.read_text().splitlines()[0])["audio"])[0] == first).all()  # made again, identical
    # voices vary per clip, from a fixed seed
    assert voice_for("spoken-django", "test", 0) == voice_for("spoken-django", "test", 0)
    assert len({voice_for("spoken-django", "test", i) for i in range(10)}) > 5


def test_a_crash_while_speaking_leaves_no_corpus_behind(tmp_path, monkeypatch):
    calls = []
    real = speech.speak

    def flaky(text, **kw):
        calls.append(text)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(text, **kw)

    monkeypatch.setattr(speech, "speak", flaky)
    with pytest.raises(KeyboardInterrupt):
        spoken_corpus("spoken-django", "test", limit=3, progress=False)
    assert list((tmp_path / "cache" / "speech").iterdir()) == []


def test_text_that_looks_like_an_option_is_read_not_obeyed():
    audio = speak("-v xx --help")
    assert audio.dtype.name == "float32" and len(audio) > SAMPLE_RATE // 4


@pytest.mark.parametrize("args, words", [
    (("spoken-nope",), "unknown spoken corpus"),
    (("spoken-django", "dev"), "unknown split"),
])
def test_what_cannot_be_made_is_refused(args, words):
    with pytest.raises(DataError, match=words):
        spoken_corpus(*args, progress=False)
    with pytest.raises(DataError, match="at least 1"):
        spoken_corpus("spoken-django", limit=0)


def test_speak_command_prints_the_rows_file_or_says_what_is_wrong(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "speak", "spoken-django", "--limit", "1")
    assert code == 0 and out.strip().endswith("rows.jsonl") and os.path.isfile(out.strip())
    code, out, err = run_cli(monkeypatch, capsys, "speak", "spoken-movies")
    assert code != 0 and "unknown spoken corpus" in err and "spoken-movie-reviews" in err


def needs_mandarin():
    if importlib.util.find_spec("espeakng_loader") is None:
        if os.environ.get("PROMPTTUNE_REQUIRE_DEV") == "1":
            pytest.fail("PROMPTTUNE_REQUIRE_DEV=1 but espeakng-loader is missing (scripts/setup.sh --dev)")
        pytest.skip("espeakng-loader is not installed (scripts/setup.sh --dev)")


def test_chinese_reviews_are_read_by_a_mandarin_voice_with_a_chinese_dictionary(tmp_path):
    import subprocess

    import soundfile

    needs_mandarin()
    index = spoken_corpus("spoken-chinese-reviews", "test", limit=4, progress=False)
    rows = [json.loads(x) for x in index.read_text().splitlines()]
    short = [r for r in load_builtin("chinese-reviews", "test") if len(r["text"]) <= 30][:4]
    assert [(r["text"], r["label"]) for r in rows] == [(t["text"], t["label"]) for t in short]
    for r in rows:
        assert 0.5 < soundfile.info(r["audio"]).duration < 15.0  # 30 characters at most: well inside Whisper's 30 s
    # the voice reads the characters as Mandarin syllables; Debian's own data has no cmn_dict and falls back to English
    cmd, env = speech.espeak_call("cmn")
    said = subprocess.run([*cmd, "-v", "cmn", "-q", "-x"], input="这部电影非常好看".encode(), capture_output=True, env=env)
    assert said.returncode == 0 and said.stdout.strip() and b"(en)" not in said.stdout
    assert "1.52" in speech.espeak_version("cmn")


def test_the_mandarin_voice_without_its_dictionary_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "espeakng_loader" else real(name, *a))
    with pytest.raises(DataError, match="Chinese dictionary") as e:
        spoken_corpus("spoken-chinese-reviews", "test", limit=1, progress=False)
    assert "pip install --no-deps espeakng-loader" in e.value.fix
    assert speech.espeak_call("en-us") == ([shutil.which("espeak-ng")], None)  # the other voices do not need it
