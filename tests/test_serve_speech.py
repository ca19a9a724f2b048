"""Serving speech artifacts: clips come in base64 (WAV / FLAC), are scored and transcribed as the artifact itself
does, several speech tasks share one server, and a bad clip is refused in the request with what, where and how."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from prompttune import PromptModel  # noqa: E402
from prompttune.backbone import Backbone  # noqa: E402
from prompttune.errors import TemplateError  # noqa: E402
from prompttune.generation import GenerationModel  # noqa: E402
from prompttune.serve import ServeEngine  # noqa: E402
from prompttune.serve.app import create_app  # noqa: E402
from test_speech_family import CLIPS, SR, WORDS, audio_libraries, tone, whisper  # noqa: E402,F401  (fixtures)


def b64(wave: np.ndarray, rate: int = SR, fmt: str = "WAV") -> str:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt, subtype="FLOAT" if fmt == "WAV" else None)  # float WAV: exact samples
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def speech_artifacts(whisper, tmp_path_factory):
    d = tmp_path_factory.mktemp("speech-art")
    bb = Backbone.load(str(whisper))
    soft = PromptModel(bb, "{audio}{soft*3} It is{mask}.", WORDS, method="soft-prompt", seed=5)
    prefix = PromptModel(Backbone.load(str(whisper)), "{audio} It is{mask}.", {"low": " low", "high": " high"}, method="prefix", seed=1)
    asr = GenerationModel(Backbone.load(str(whisper)), "{soft*3}{audio}", target="text", method="soft-prompt", seed=2)
    return {"tone": soft.save_pretrained(d / "tone"), "tone-prefix": prefix.save_pretrained(d / "tone-prefix"),
            "asr": asr.save_pretrained(d / "asr")}


@pytest.fixture
def engine(whisper, speech_artifacts):
    eng = ServeEngine(Backbone.load(str(whisper)))
    for name, path in speech_artifacts.items():
        eng.add(path, name=name)
    yield eng
    eng.close()


def test_served_clips_score_and_transcribe_as_the_artifacts_do(engine, speech_artifacts, audio_libraries):
    want_soft = PromptModel.from_pretrained(speech_artifacts["tone"]).predict_log_probs(CLIPS).exp()
    want_prefix = PromptModel.from_pretrained(speech_artifacts["tone-prefix"]).predict_log_probs(CLIPS).exp()
    gm = GenerationModel.from_pretrained(speech_artifacts["asr"])
    want_text = gm.generate([{"audio": c["audio"]} for c in CLIPS], max_new_tokens=6)
    clips = [b64(c["audio"]) for c in CLIPS]
    with TestClient(create_app(engine, max_body_bytes=2_000_000)) as c:
        r = c.post("/v1/tasks/tone/predict", json={"inputs": clips})
        assert r.status_code == 200, r.text
        got = torch.tensor([[p["probabilities"][k] for k in ("low", "high")] for p in r.json()["predictions"]])
        assert torch.allclose(got, want_soft, atol=1e-5)
        # a soft-prompt task and a prefix task in one mixed request; the data: URL form is accepted too
        mixed = c.post("/v1/predict", json={"requests": [{"task": "tone-prefix", "input": {"audio": clips[0]}},
                                                         {"task": "tone", "input": "data:audio/wav;base64," + clips[1]},
                                                         {"task": "tone-prefix", "input": clips[2]}]})
        assert mixed.status_code == 200, mixed.text
        res = mixed.json()["results"]
        assert [x["task"] for x in res] == ["tone-prefix", "tone", "tone-prefix"]
        for x, want in zip(res, [want_prefix[0], want_soft[1], want_prefix[2]]):
            assert torch.allclose(torch.tensor([x["probabilities"]["low"], x["probabilities"]["high"]]), want, atol=1e-5)
        g = c.post("/v1/tasks/asr/generate", json={"inputs": clips, "max_new_tokens": 6})
        assert g.status_code == 200, g.text
        assert [o["text"] for o in g.json()["outputs"]] == want_text


def test_a_flac_clip_at_another_rate_is_resampled_like_a_file(engine, speech_artifacts, audio_libraries):
    wave = tone(440, 0.8)
    import soxr

    import soundfile

    at8k = soxr.resample(wave, SR, 8000).astype(np.float32)
    sent = b64(at8k, 8000, "FLAC")
    heard, rate = soundfile.read(io.BytesIO(base64.b64decode(sent)), dtype="float32")  # FLAC is 16-bit PCM
    want = PromptModel.from_pretrained(speech_artifacts["tone"]).predict_log_probs([{"audio": {"array": heard, "sampling_rate": rate}}])
    got = engine.predict("tone", [sent])[0]["probabilities"]
    assert rate == 8000 and torch.allclose(torch.tensor([got["low"], got["high"]]), want.exp()[0], atol=1e-5)


@pytest.mark.parametrize("value,what", [
    ("not base64!", "not base64"),
    (base64.b64encode(b"RIFF but not really a wave file").decode(), "not a sound file"),
    ("/etc/passwd", "not base64"),  # a path is never read
])
def test_a_bad_clip_is_refused_in_the_request_naming_the_input(engine, value, what, audio_libraries):
    with pytest.raises(TemplateError) as e:
        engine.predict("tone", [b64(tone(300, 0.5)), value])
    assert what in e.value.what and e.value.where == "inputs[1], field 'audio'" and "base64" in e.value.fix


def test_a_clip_longer_than_whisper_hears_is_refused_before_it_is_queued(engine, audio_libraries):
    with pytest.raises(TemplateError, match="31.0 s long"):
        engine.predict("tone", [b64(np.zeros(31 * SR, dtype=np.float32))])
    assert engine.queue_depth() == 0


def test_the_http_error_for_a_bad_clip_says_where_and_how(engine, audio_libraries):
    with TestClient(create_app(engine)) as c:
        r = c.post("/v1/tasks/asr/generate", json={"input": "@@@"})
        assert r.status_code == 422 and r.json()["where"] == "inputs[0], field 'audio'" and "base64" in r.json()["fix"]
