"""The speech family (Whisper) on a tiny random Whisper: the clip at {audio} goes to the encoder, the prompt to the
decoder; batched scoring and generation equal one at a time (either padding side), the fast path equals the
likelihood path, generate with its KV cache equals generate without, the encoder runs once per clip, prefix tuning
touches only the decoder's self-attention, artifacts round-trip, and bad audio or templates are refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prompttune import PromptModel
from prompttune.backbone import Backbone
from prompttune.backbone.speech import SpeechSeq2Seq, read_audio
from prompttune.errors import DataError, TemplateError
from prompttune.generation import GenerationModel
from prompttune.metrics import error_rates_of
from prompttune.template import Template

from test_ct2_whisper import need, tiny_en_dir  # the real tiny.en tokenizer; skips or fails as CI wants

SR = 16000


def tone(freq: float, seconds: float, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    """A 2-layer random Whisper (d_model 32) with the real tiny.en tokenizer, saved as transformers writes it."""
    import transformers

    tok = transformers.WhisperTokenizerFast(tokenizer_file=str(tiny_en_dir() / "tokenizer.json"))
    cfg = transformers.WhisperConfig(vocab_size=51864, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                                     max_source_positions=1500, max_target_positions=64, decoder_start_token_id=50257,
                                     eos_token_id=50256, pad_token_id=50256, bos_token_id=50256, init_std=0.2,
                                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    src = tmp_path_factory.mktemp("whisper") / "tiny-random-whisper"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    transformers.WhisperFeatureExtractor().save_pretrained(src)
    return src


@pytest.fixture
def backbone(whisper):
    return Backbone.load(str(whisper))


CLIPS = [{"audio": tone(300, 0.6), "label": "low"}, {"audio": tone(2500, 1.4), "label": "high"},
         {"audio": tone(450, 1.0, 1.0), "label": "low"}]
WORDS = {"low": " low", "high": [" high", " up here"]}  # one single-token word, one multi-token word


def test_a_whisper_loads_as_the_speech_family_with_its_feature_extractor(backbone):
    assert isinstance(backbone.family, SpeechSeq2Seq) and backbone.family.name == "speech-seq2seq"
    assert backbone.family.feature_extractor.feature_size == 80
    assert backbone.family.start_of_transcript() == [50257, 50362]  # <|startoftranscript|><|notimestamps|> (English-only)


def test_audio_renders_as_the_start_of_transcript_and_text_before_it_as_the_previous_prompt(backbone):
    tok = backbone.tokenizer
    pm = PromptModel(backbone, "Tones:{audio} It is{mask}.", WORDS, method="zero-shot")
    r = pm.render(CLIPS[0])
    assert r.ids[0] == tok.convert_tokens_to_ids("<|startofprev|>")
    k = r.ids.index(50257)
    assert r.ids[k:k + 2] == [50257, 50362] and r.audio is CLIPS[0]["audio"]
    assert tok.decode(r.ids[1:k]) == "Tones:"
    assert tok.eos_token_id not in r.ids[: r.mask] + r.ids[r.mask + 1:]  # no <|endoftext|> after the prompt
    r2 = PromptModel(backbone, "{audio} It is{mask}.", WORDS, method="zero-shot").render(CLIPS[0])
    assert r2.ids[:2] == [50257, 50362]


@pytest.mark.parametrize("template", ["{audio}{soft*3} It is{mask}.", "{audio} It is{mask}"])
def test_batched_scores_equal_one_at_a_time_on_either_padding_side(backbone, template):
    torch.manual_seed(1)
    outs = []
    for side in ("right", "left"):
        pm = PromptModel(backbone, template, WORDS if "." in template else {"low": " low", "high": " high"},
                         method="soft-prompt" if "soft" in template else "zero-shot", padding_side=side, seed=3)
        pm.eval()
        batched = pm.predict_log_probs(CLIPS, batch_size=3)
        alone = torch.cat([pm.predict_log_probs([c], batch_size=1) for c in CLIPS])
        assert torch.allclose(batched, alone, atol=1e-5), (batched, alone)
        assert batched.exp().sum(-1).sub(1).abs().max() < 1e-5
        outs.append(batched)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert (outs[0][0] - outs[0][1]).abs().max() > 1e-4  # the clip matters: different tones, different scores


def test_fast_path_equals_the_likelihood_path(backbone):
    pm = PromptModel(backbone, "{audio} It is{mask}", {"low": " low", "high": " high"}, method="zero-shot")
    assert pm.fast
    fast = pm.predict_log_probs(CLIPS)
    pm.fast = False
    slow = pm.predict_log_probs(CLIPS)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_the_encoder_runs_once_per_clip_while_it_is_frozen(backbone):
    calls = []
    h = backbone.model.get_encoder().register_forward_hook(lambda m, a, kw, o: calls.append(kw["input_features"].shape[0]),
                                                           with_kwargs=True)
    try:
        pm = PromptModel(backbone, "{audio}{soft*2} It is{mask}.", WORDS, method="soft-prompt")
        first = pm.predict_log_probs(CLIPS)
        again = pm.predict_log_probs(CLIPS)
        assert sum(calls) == 3 and torch.equal(first, again)  # 3 clips x 2 label words x 2 runs: 3 encoder rows
        with torch.no_grad():  # a changed encoder weight is not served from the cache
            next(backbone.model.get_encoder().parameters()).add_(0.1)
        changed = pm.predict_log_probs(CLIPS)
        assert sum(calls) == 6 and not torch.allclose(first, changed)
    finally:
        h.remove()


def test_prefix_goes_into_the_decoder_self_attention_only(backbone):
    pm = PromptModel(backbone, "{audio} It is{mask}.", WORDS, method="prefix")
    points = backbone.prefix_injector().points
    assert len(points) == 2 and all(".decoder." in p.name and "encoder_attn" not in p.name for p in points), points
    lp = pm.predict_log_probs(CLIPS)
    zs = PromptModel(backbone, "{audio} It is{mask}.", WORDS, method="zero-shot").predict_log_probs(CLIPS)
    assert not torch.allclose(lp, zs, atol=1e-4)  # the prefix is in effect


def test_a_soft_prompt_learns_which_tone_it_hears(backbone):
    """Low (200-500 Hz) vs high (2-3.5 kHz) tones; 12 clips per class; 4 held-out per class. Through a random 2-layer
    Whisper the clips differ little at the read position, so this is slow to learn: held-out accuracy after 40 steps
    at lr 0.3 is 0.875 for init seeds 0, 1 and 2 (the label-word init does not depend on the seed), zero-shot 0.5.
    The bound allows one more miss."""
    rng = np.random.default_rng(0)

    def clips(n):
        out = []
        for i in range(n):
            low = i % 2 == 0
            f = rng.uniform(200, 500) if low else rng.uniform(2000, 3500)
            out.append({"audio": tone(f, rng.uniform(0.4, 1.2), rng.uniform(0, 6)), "label": "low" if low else "high"})
        return out

    train, test = clips(24), clips(8)
    pm = PromptModel(backbone, "{audio}{soft*4} It is{mask}", {"low": " low", "high": " high"}, method="soft-prompt", seed=0)
    before = pm.evaluate(test)["accuracy"]
    pm.fit(train, None, max_steps=40, batch_size=8, lr=0.3, progress=False)
    after = pm.evaluate(test)["accuracy"]
    assert before == 0.5 and after >= 0.75, (before, after)


def test_generation_batched_equals_one_at_a_time_and_the_kv_cache_changes_nothing(backbone):
    gm = GenerationModel(backbone, "{soft*3}{audio}", target="text", method="soft-prompt", seed=2)
    rows = [{"audio": c["audio"], "text": "x"} for c in CLIPS]
    opts = dict(max_new_tokens=6)
    batched = gm.generate(rows, **opts)
    alone = [gm.generate([r], **opts)[0] for r in rows]
    uncached = gm.generate(rows, use_cache=False, **opts)
    assert batched == alone == uncached
    assert len(set(batched)) > 1 or any(batched)  # the random model says something that depends on the clip
    beams = gm.generate(rows, num_beams=2, **opts)
    assert len(beams) == 3 and all(isinstance(b, str) for b in beams)


def test_the_generation_loss_reads_only_targets_and_training_lowers_it(backbone):
    rows = [{"audio": tone(300 + 200 * i, 0.8), "text": "hello"} for i in range(6)]
    gm = GenerationModel(backbone, "{soft*4}{audio}", target="text", method="soft-prompt", seed=0)
    ids = gm.collate(rows[:2])
    assert ids.input_features.shape == (2, 80, 3000)
    before = gm.loss_on(rows)
    gm.fit(rows, None, max_steps=20, batch_size=6, lr=0.3, progress=False)
    assert gm.loss_on(rows) < 0.92 * before  # learning to say "hello": 11.42 -> 9.74 (0.85x) on this random model
    m = gm.evaluate(rows, max_new_tokens=4)
    assert 0.0 <= m["wer"] and 0.0 <= m["cer"] and "rougeL" in m


def test_artifacts_of_a_speech_prompt_round_trip(backbone, whisper, tmp_path):
    pm = PromptModel(backbone, "{audio}{soft*3} It is{mask}.", WORDS, method="soft-prompt", seed=5)
    want = pm.predict_log_probs(CLIPS)
    out = pm.save_pretrained(tmp_path / "art")
    back = PromptModel.from_pretrained(out)
    assert back.backbone.family.name == "speech-seq2seq"
    assert torch.allclose(back.predict_log_probs(CLIPS), want, atol=1e-6)



@pytest.fixture(scope="module")
def multilingual_whisper(whisper, tmp_path_factory):
    """The tiny random Whisper saved as a multilingual one (its tokenizer already has Whisper's language tokens)."""
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper)
    tok = transformers.AutoTokenizer.from_pretrained(whisper)
    gc = model.generation_config = transformers.GenerationConfig(decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256)
    gc.is_multilingual = True
    gc.lang_to_id = {t: tok.convert_tokens_to_ids(t) for t in ("<|en|>", "<|zh|>", "<|fr|>")}
    gc.task_to_id = {"transcribe": tok.convert_tokens_to_ids("<|transcribe|>"), "translate": tok.convert_tokens_to_ids("<|translate|>")}
    dest = tmp_path_factory.mktemp("whisper") / "tiny-random-multilingual"
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    transformers.WhisperFeatureExtractor().save_pretrained(dest)
    return dest


@pytest.mark.parametrize("template,start", [
    ("{audio} It is{mask}.", ["<|en|>", "<|transcribe|>"]),  # Whisper's default: English, transcribed
    ("{audio:zh} 它是{mask}.", ["<|zh|>", "<|transcribe|>"]),
    ("{audio: fr   translate }{soft*2} It is{mask}.", ["<|fr|>", "<|translate|>"]),
])
def test_a_multilingual_whisper_hears_the_language_and_task_the_template_names(multilingual_whisper, template, start):
    bb = Backbone.load(str(multilingual_whisper))
    pm = PromptModel(bb, template, WORDS, method="soft-prompt" if "soft" in template else "zero-shot")
    ids = pm.render(CLIPS[0]).ids
    tok = bb.tokenizer
    assert tok.convert_ids_to_tokens(ids[:4]) == ["<|startoftranscript|>", *start, "<|notimestamps|>"]


def test_the_language_of_a_speech_prompt_survives_save_and_load(multilingual_whisper, tmp_path):
    pm = PromptModel(Backbone.load(str(multilingual_whisper)), "{audio:zh}{soft*3} It is{mask}.", WORDS, method="soft-prompt", seed=5)
    want = pm.predict_log_probs(CLIPS)
    back = PromptModel.from_pretrained(pm.save_pretrained(tmp_path / "art"))
    assert back.template.text.startswith("{audio:zh}")
    assert back.render(CLIPS[0]).ids[:4] == pm.render(CLIPS[0]).ids[:4]
    torch.testing.assert_close(back.predict_log_probs(CLIPS), want, atol=1e-6, rtol=0)
    english = PromptModel(pm.backbone, "{audio:en}{soft*3} It is{mask}.", WORDS, method="soft-prompt", seed=5)
    assert not torch.allclose(english.predict_log_probs(CLIPS), want, atol=1e-4)  # the language token is heard


def test_a_language_a_model_lacks_is_refused_with_the_codes_it_has(multilingual_whisper, backbone):
    with pytest.raises(TemplateError, match=r"no language 'xx'.*en, fr, zh"):
        PromptModel(Backbone.load(str(multilingual_whisper)), "{audio:xx} It is{mask}.", WORDS, method="zero-shot")
    with pytest.raises(TemplateError, match="English-only model"):  # tiny.en: no language or task to choose
        PromptModel(backbone, "{audio:zh} It is{mask}.", WORDS, method="zero-shot")
    assert PromptModel(backbone, "{audio:en} It is{mask}.", WORDS, method="zero-shot").render(CLIPS[0]).ids[:2] == [50257, 50362]
    for bad in ["{audio:chinese} {mask}", "{audio:zh summarise} {mask}", "{audio:} {mask}", "{audio:ZH} {mask}"]:
        with pytest.raises(TemplateError, match=r"(?s)audio option.*e.g. \{audio:zh\}"):
            Template(bad)

@pytest.fixture
def audio_libraries():
    import importlib.util

    need(all(importlib.util.find_spec(m) for m in ("soundfile", "soxr", "jiwer")), "the speech extra (soundfile, soxr, jiwer)")


def test_audio_paths_and_dataset_values_are_read_and_resampled(tmp_path, audio_libraries):
    import soundfile

    wave = tone(440, 0.5)
    soundfile.write(str(tmp_path / "a.flac"), wave, SR)
    soundfile.write(str(tmp_path / "b.wav"), np.stack([wave, wave], 1), 8000)  # stereo at 8 kHz
    assert np.allclose(read_audio(str(tmp_path / "a.flac"), "x"), wave, atol=1e-4)
    b = read_audio(str(tmp_path / "b.wav"), "x")
    assert abs(len(b) - 2 * len(wave)) <= 2  # resampled to 16 kHz
    d = read_audio({"array": wave[::2], "sampling_rate": 8000}, "x")
    assert abs(len(d) - len(wave)) <= 2


@pytest.mark.parametrize("value,what", [("/no/such/clip.flac", "does not exist"), (np.zeros((0,)), "empty"),
                                        (np.array([np.nan, 1.0]), "not finite"), (object(), "not a path or an array")])
def test_bad_audio_is_refused_with_what_and_where(value, what, audio_libraries):
    with pytest.raises(DataError, match=what) as e:
        read_audio(value, "audio 3")
    assert e.value.where == "audio 3" and e.value.fix


def test_a_clip_longer_than_whisper_hears_is_refused_not_cut(backbone):
    pm = PromptModel(backbone, "{audio} It is{mask}.", WORDS, method="zero-shot")
    with pytest.raises(DataError, match="31.0 s long") as e:
        pm.predict([{"audio": tone(300, 31.0)}])
    assert "30 s" in e.value.fix


def test_a_speech_template_needs_exactly_one_audio_field(backbone):
    for bad in ["Review: {text} {mask}", "{audio}{audio} {mask}"]:
        with pytest.raises(TemplateError, match="audio"):
            PromptModel(backbone, bad, WORDS, method="zero-shot")
    with pytest.raises(TemplateError, match="audio"):
        backbone.family.renderer_options(Template("{text}"))


def test_a_file_that_is_not_audio_fails_with_its_path(backbone, tmp_path, audio_libraries):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    pm = PromptModel(backbone, "{audio} It is{mask}.", WORDS, method="zero-shot")
    with pytest.raises(DataError, match="notes.wav"):
        pm.predict([{"audio": str(bad)}])


def test_error_rates_fold_case_and_punctuation(audio_libraries):
    got = error_rates_of(["Hello, world!", "a b c"], ["hello world", "a x c"])
    assert got["wer"] == pytest.approx(1 / 5) and got["cer"] == pytest.approx(1 / 16)
    # Chinese: punctuation and the spaces around characters are no errors; 欢 heard as 歡 is one error in 12 characters
    got = error_rates_of(["这部电影 非常好看", "我很喜欢"], ["这部电影，非常好看。", "我很喜歡！"])
    assert got["cer"] == pytest.approx(1 / 12)


@pytest.mark.parametrize("method", ["lora", "prompt-finetune"])
def test_methods_that_train_weights_work_on_the_speech_family(whisper, method, tmp_path):
    bb = Backbone.load(str(whisper))  # its own copy: these methods change the weights
    pm = PromptModel(bb, "{audio} It is{mask}.", WORDS, method=method)
    before = pm.predict_log_probs(CLIPS)
    pm.fit(CLIPS, None, max_steps=3, batch_size=3, lr=1e-2, progress=False)
    after = pm.predict_log_probs(CLIPS)
    assert not torch.allclose(before, after, atol=1e-4)  # the trained weights (encoder ones included) are in effect
    back = PromptModel.from_pretrained(pm.save_pretrained(tmp_path / "art"))
    assert torch.allclose(back.predict_log_probs(CLIPS), after, atol=1e-5)


def test_lora_on_the_decoder_only_keeps_the_encoder_cached_while_it_trains(whisper, tmp_path):
    """``target_modules`` as a regular expression (peft's meaning): LoRA in the decoder's attention only. The encoder
    trains nothing, so each clip is encoded once over all the training steps and evaluations."""
    bb = Backbone.load(str(whisper))
    calls = []
    h = bb.model.get_encoder().register_forward_hook(lambda m, a, kw, o: calls.append(kw["input_features"].shape[0]), with_kwargs=True)
    try:
        pm = PromptModel(bb, "{audio} It is{mask}.", WORDS, method="lora",
                         method_options={"target_modules": r".*decoder.*\.(q_proj|v_proj)"})
        names = list(pm.method._lora)
        assert names and all(".decoder." in n for n in names), names
        assert any(".encoder_attn." in n for n in names) and any(".self_attn." in n for n in names)
        before = pm.predict_log_probs(CLIPS)
        pm.fit(CLIPS, None, max_steps=4, batch_size=3, lr=1e-2, progress=False)
        after = pm.predict_log_probs(CLIPS)
        assert sum(calls) == 3, calls  # 3 clips, 4 steps and 2 evaluations: encoded once
    finally:
        h.remove()
    assert not torch.allclose(before, after, atol=1e-4)
    back = PromptModel.from_pretrained(pm.save_pretrained(tmp_path / "art"))
    assert back.method.options.target_modules == r".*decoder.*\.(q_proj|v_proj)"
    assert torch.allclose(back.predict_log_probs(CLIPS), after, atol=1e-5)


def test_peft_s_default_lora_on_whisper_adapts_the_encoder_too_so_it_is_run_each_step(whisper):
    bb = Backbone.load(str(whisper))
    pm = PromptModel(bb, "{audio} It is{mask}.", WORDS, method="lora")
    assert any(".encoder.layers." in n for n in pm.method._lora) and any(".decoder.layers." in n for n in pm.method._lora)
    calls = []
    h = bb.model.get_encoder().register_forward_hook(lambda m, a, kw, o: calls.append(kw["input_features"].shape[0]), with_kwargs=True)
    try:
        pm.fit(CLIPS, None, max_steps=2, batch_size=3, lr=1e-2, progress=False)
    finally:
        h.remove()
    assert sum(calls) >= 6, calls  # every training step encodes its 3 clips again


def test_the_cli_trains_evaluates_and_predicts_on_audio_files(whisper, tmp_path, monkeypatch, capsys, audio_libraries):
    import json

    import soundfile
    import yaml

    from conftest import run_cli

    rng = np.random.default_rng(1)
    lines = []
    for i in range(12):
        low = i % 2 == 0
        path = tmp_path / f"clip{i}.flac"
        soundfile.write(str(path), tone(rng.uniform(200, 500) if low else rng.uniform(2000, 3000), 0.5), SR)
        lines.append(json.dumps({"audio": str(path), "label": "low" if low else "high"}))
    (tmp_path / "clips.jsonl").write_text("\n".join(lines) + "\n")
    cfg = {"model": {"name": str(whisper)}, "prompt": {"template": "{audio}{soft*2} It is{mask}", "verbalizer": {"low": " low", "high": " high"}},
           "method": {"name": "soft-prompt"}, "data": {"train": str(tmp_path / "clips.jsonl"), "test": str(tmp_path / "clips.jsonl"),
                                                       "shots_per_class": 4, "dev_size": 2}, "train": {"max_steps": 2}, "output": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(monkeypatch, capsys, "train", tmp_path / "run.yaml", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 12 and 0 <= res["accuracy"] <= 1 and res["trainable_parameters"] == 2 * 32
    code, out, err = run_cli(monkeypatch, capsys, "predict", tmp_path / "out", "--input", tmp_path / "clips.jsonl", "--json")
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(answers) == 12 and all(a["label"] in ("low", "high") for a in answers)
