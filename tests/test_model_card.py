"""Artifacts a person and the Hub understand: every artifact has a model card (README.md) whose front matter the Hub
reads and whose body shows user text literally; Hub ids load through huggingface_hub (mocked here: no network), and
push_to_hub uploads exactly the artifact."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli, tiny_backbone, toy_rows, write_jsonl
from prompttune import load
from prompttune.artifact import artifact_bytes, save
from prompttune.backbone import Backbone
from prompttune.config import RunConfig
from prompttune.errors import ArtifactError
from prompttune.generation import GenerationModel
from prompttune.model import PromptModel

VERB = {"negative": "bad", "positive": "good"}
SOFT = "{soft*4} {text} Sentiment: {mask}"


def _card(d) -> tuple[dict, str]:
    """The front matter (parsed as YAML) and the body of the README.md in ``d``."""
    text = (Path(d) / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _tokens(body: str):
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").parse(body)


def _inline_codes(body: str) -> list[str]:
    return [c.content for t in _tokens(body) if t.type == "inline" for c in (t.children or []) if c.type == "code_inline"]


def _fences(body: str) -> list[str]:
    return [t.content for t in _tokens(body) if t.type == "fence"]


def _named(bb: Backbone, name: str) -> Backbone:
    bb.name, bb.source = name, {"name": name}
    return bb


# ---- the card of every kind of artifact -------------------------------------------------------------------------
CASES = {  # id: (backbone kind, method, template, task)
    "soft-prompt": ("llama", "soft-prompt", SOFT, "classification"),
    "prefix": ("llama", "prefix", "{text} Sentiment: {mask}", "classification"),
    "prompt-finetune": ("bert-mlm", "prompt-finetune", "{text} Sentiment: {mask}", "classification"),
    "generation": ("llama", "soft-prompt", "{soft*2} Article: {src} Headline:", "generation"),
}


def _model(case: str, name: str):
    kind, method, template, task = CASES[case]
    bb = _named(tiny_backbone(kind), name)
    if task == "generation":
        return GenerationModel(bb, template, target="headline", method=method)
    return PromptModel(bb, template, VERB, method)


@pytest.mark.parametrize("case", list(CASES))
def test_every_artifact_has_a_card_the_hub_reads_with_the_prompt_and_how_to_load_it(case, tmp_path):
    model = _model(case, "someone/tiny-base")
    model.save_pretrained(tmp_path / "a")
    front, body = _card(tmp_path / "a")
    _, method, template, task = CASES[case]
    trains_backbone = case == "prompt-finetune"
    assert front["library_name"] == "prompttune"
    assert front["base_model"] == "someone/tiny-base"
    assert front["tags"] == ["prompttune", "prompt-tuning", method, task,
                             f"base_model:{'finetune' if trains_backbone else 'adapter'}:someone/tiny-base"]
    assert front["pipeline_tag"] == ("summarization" if task == "generation" else "text-classification")
    assert "metrics" not in front and "language" not in front  # none given, none known
    meta = json.loads((tmp_path / "a" / "prompt.json").read_text())
    assert meta["template"] in [f.rstrip("\n") for f in _fences(body)]  # the template, verbatim, in a code block
    codes = _inline_codes(body)
    if task == "classification":
        assert {"negative", "bad", "positive", "good"} <= set(codes)
    else:
        assert "headline" in codes
    assert method in codes and "someone/tiny-base" in codes
    assert f"{meta['trainable_parameters']:,}" in body
    python, cli = next(f for f in _fences(body) if "import prompttune" in f), next(f for f in _fences(body) if "prompttune predict" in f)
    cls = "GenerationModel" if task == "generation" else "PromptModel"
    assert 'prompttune.load("path/to/artifact")' in python and f'{cls}.from_pretrained("path/to/artifact")' in python
    assert "prompttune predict path/to/artifact 'Your text here.'" in cli
    exportable = method in ("soft-prompt", "prefix")  # on a causal LM, soft tokens first
    assert any("prompttune export-peft path/to/artifact" in f for f in _fences(body)) == exportable
    assert any('PeftModel.from_pretrained(base, "peft-adapter")' in f for f in _fences(body)) == exportable
    assert ("fine-tuned copy of the model in `backbone`/" in body) == trains_backbone
    for lib in ("prompttune", "torch", "transformers"):
        assert f"- {lib} `{meta['versions'][lib]}`" in body
    assert "Not recorded" in body and "No test metrics recorded" in body  # saved from Python: no run, no metrics


def test_a_local_backbone_gives_no_base_model_and_only_its_last_path_part(saved_tiny, tmp_path):
    pm = PromptModel(Backbone.load(saved_tiny("llama")), SOFT, VERB, "soft-prompt")
    pm.save(tmp_path / "a")
    front, body = _card(tmp_path / "a")
    assert "base_model" not in front and not any(t.startswith("base_model:") for t in front["tags"])
    assert saved_tiny("llama") not in body and Path(saved_tiny("llama")).name in _inline_codes(body)


def test_a_shipped_short_name_maps_to_its_hub_model():
    from prompttune.card import base_model_id

    assert base_model_id({"name": "smollm2-135m"}) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id({"name": "org/model"}) == "org/model"
    assert base_model_id({"name": "/models/org/model"}) is None and base_model_id({"name": "x/y.gguf"}) is None


def test_metrics_and_the_runs_data_are_in_the_card(tmp_path):
    pm = _model("soft-prompt", "someone/tiny-base")
    run = RunConfig.model_validate({
        "model": {"name": "someone/tiny-base"}, "prompt": {"template": SOFT, "verbalizer": VERB}, "method": {"name": "soft-prompt"},
        "data": {"train": "movie-reviews", "test": "/home/alice/private/test-set.jsonl", "dev": "hf:someone/reviews:en@validation",
                 "shots_per_class": 16, "test_size": 200, "seed": 7},
        "train": {"seed": 3, "lr": 0.01, "max_steps": 40}})
    save(pm, tmp_path / "a", metrics={"accuracy": 0.8125, "macro_f1": 0.75, "n": 200, "predictions": [1, 0]}, run=run)
    front, body = _card(tmp_path / "a")
    assert front["metrics"] == ["accuracy", "f1"]
    assert front["language"] == ["en"]  # movie-reviews is English
    assert front["datasets"] == ["someone/reviews"]
    assert "- `accuracy`: 0.8125" in body and "- `macro_f1`: 0.7500" in body and "on 200 held-out examples" in body
    assert "predictions" not in body  # only the artifact's metrics
    data = body.split("## Training data", 1)[1].split("## Evaluation", 1)[0]
    assert "built-in corpus `movie-reviews`" in data and "16 examples per label" in data
    assert "Hub dataset `someone/reviews`, name `en`, split `validation`" in data
    assert "file `test-set.jsonl`" in data and "/home/alice" not in body  # a local path by its last part only
    assert "Sampling seed: 7" in data and "seed 3" in data and "learning rate 0.0100" in data and "at most 40 steps" in data


def test_a_translation_prompt_is_tagged_translation_with_its_languages(tmp_path):
    gm = GenerationModel(tiny_backbone("llama"), "{soft*2} English: {en} German:", target="de", method="soft-prompt")
    gm.save(tmp_path / "a")
    front, _ = _card(tmp_path / "a")
    assert front["pipeline_tag"] == "translation" and front["language"] == ["en", "de"]


HOSTILE = "<script>alert(1)</script> **bold** [link](http://x) | a | ```` ~~~ {text}\n# heading\n<img src=x onerror=alert(2)>: {mask}"


def test_a_template_and_label_words_with_markdown_or_html_are_shown_never_interpreted(tmp_path):
    verb = {"<b>neg</b>": ["`bad`", "**awful**"], "pos | x": ["good\n\n<script>x</script>"]}
    pm = PromptModel(tiny_backbone("llama"), HOSTILE, verb, "zero-shot")
    pm.save(tmp_path / "a")
    _, body = _card(tmp_path / "a")
    tokens = _tokens(body)
    assert not [t for t in tokens if t.type.startswith("html")]
    assert not [c for t in tokens if t.type == "inline" for c in (t.children or []) if c.type.startswith("html")]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert "heading" not in headings  # the template's "# heading" line stayed inside its code block
    assert HOSTILE + "\n" in _fences(body)
    codes = _inline_codes(body)
    assert {"<b>neg</b>", "`bad`", "**awful**", "pos | x", "good  <script>x</script>"} <= set(codes)  # line breaks as spaces


def test_the_card_is_not_part_of_the_artifacts_size(tmp_path):
    pm = _model("soft-prompt", "someone/tiny-base")
    pm.save(tmp_path / "a")
    d = tmp_path / "a"
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "prompt.json", "prompt.safetensors"]
    assert artifact_bytes(d) == (d / "prompt.json").stat().st_size + (d / "prompt.safetensors").stat().st_size
    pm.save(d)  # README.md is prompttune's own: saving again replaces it without --overwrite
    assert (d / "README.md").is_file()


@pytest.mark.parametrize("own", ["# My project\n\nnotes\n", "---\nlibrary_name: transformers\n---\n\n# a card\n", ""])
def test_a_readme_prompttune_did_not_write_is_never_replaced_without_overwrite(tmp_path, own):
    from prompttune.errors import ConfigError

    pm = _model("soft-prompt", "someone/tiny-base")
    d = tmp_path / "mine"
    d.mkdir()
    (d / "README.md").write_text(own)
    with pytest.raises(ConfigError, match=r"holds files prompttune did not write \(README.md\)"):
        pm.save(d)
    assert (d / "README.md").read_text() == own and sorted(p.name for p in d.iterdir()) == ["README.md"]
    pm.save(d, overwrite=True)
    assert "library_name: prompttune" in (d / "README.md").read_text()


def test_a_training_run_writes_the_card_with_its_test_metrics(saved_tiny, tmp_path):
    from prompttune.pipeline import run_training

    train, test = write_jsonl(tmp_path / "train.jsonl", toy_rows(8)), write_jsonl(tmp_path / "test.jsonl", toy_rows(6, seed=1))
    cfg = RunConfig.model_validate({
        "model": {"name": saved_tiny("llama")}, "prompt": {"template": "{text} Sentiment: {mask}", "verbalizer": VERB},
        "method": {"name": "zero-shot"}, "data": {"train": train, "test": test, "shots_per_class": None},
        "output": str(tmp_path / "run")})
    res = run_training(cfg, progress=False, log=lambda m: None)
    front, body = _card(tmp_path / "run")
    assert front["metrics"] == ["accuracy", "f1"] and front["tags"][:4] == ["prompttune", "prompt-tuning", "zero-shot", "classification"]
    assert f"- `accuracy`: {res['accuracy']:.4f}" in body and "on 6 held-out examples" in body
    assert res["artifact_bytes"] == sum((tmp_path / "run" / f).stat().st_size for f in ("prompt.json", "prompt.safetensors"))


# ---- loading: local directories and Hub ids ---------------------------------------------------------------------
@pytest.fixture
def soft_dir(saved_tiny, tmp_path):
    pm = PromptModel(Backbone.load(saved_tiny("llama")), SOFT, VERB, "soft-prompt")
    pm.fit(toy_rows(8), None, lr=0.05, max_steps=2, progress=False)
    pm.save(tmp_path / "art")
    return tmp_path / "art", pm


def test_from_pretrained_loads_a_local_directory(soft_dir):
    d, pm = soft_dir
    again = PromptModel.from_pretrained(d)
    rows = toy_rows(4, seed=5)
    torch.testing.assert_close(again.predict_log_probs(rows), pm.predict_log_probs(rows))
    with pytest.raises(ArtifactError, match="holds a classification artifact"):
        GenerationModel.from_pretrained(d)


@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_a_missing_hub_id_offline_says_what_where_and_the_fix(offline_empty_cache):
    with pytest.raises(ArtifactError) as e:
        PromptModel.from_pretrained("someone/missing")
    err = e.value
    assert err.where == "someone/missing"
    assert "no local directory 'someone/missing'" in err.what and "not in the local Hugging Face cache" in err.what
    assert "HF_HUB_OFFLINE=1" in err.what
    assert "check the id" in err.fix and "local artifact directory" in err.fix and "HF_HUB_OFFLINE=1 only the local" in err.fix


def test_the_cli_predict_of_a_missing_hub_id_fails_with_the_message(offline_empty_cache, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "predict", "someone/missing", "a good film")
    assert code != 0 and out == "" and "Traceback" not in err
    assert err.startswith("error:") and "someone/missing" in err and "HF_HUB_OFFLINE" in err and "Fix:" in err


@pytest.mark.parametrize("spec", ["no/such/artifact", "./nowhere", "/abs/nowhere", "no--pe/x", "name-only"])
def test_a_string_that_is_no_hub_id_gives_the_no_artifact_error_without_asking_the_hub(spec, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the Hub was asked"))
    with pytest.raises(ArtifactError, match=r"is not a prompttune artifact \(no prompt.json\)"):
        load(spec)


def test_a_local_directory_wins_over_the_hub_id_of_the_same_name(soft_dir, monkeypatch):
    import huggingface_hub

    d, _ = soft_dir
    (d.parent / "someone").mkdir()
    shutil.copytree(d, d.parent / "someone" / "art")
    monkeypatch.chdir(d.parent)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the Hub was asked"))
    assert isinstance(load("someone/art"), PromptModel)


def test_a_hub_id_is_downloaded_with_snapshot_download_and_loaded(soft_dir, monkeypatch):
    import huggingface_hub

    d, pm = soft_dir
    calls = []

    def fake(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    again = PromptModel.from_pretrained("someone/my-prompt@v1")
    rows = toy_rows(4, seed=5)
    torch.testing.assert_close(again.predict_log_probs(rows), pm.predict_log_probs(rows))
    (repo, kw), = calls
    assert repo == "someone/my-prompt" and kw["revision"] == "v1"
    assert kw["allow_patterns"] == ["prompt.json", "prompt.safetensors", "README.md", "backbone/*"]
    load("someone/my-prompt", revision="main")
    assert calls[-1][1]["revision"] == "main"


def test_the_cli_and_the_server_read_a_hub_id_too(soft_dir, monkeypatch, capsys, tmp_path):
    import huggingface_hub

    from prompttune.serve import ServeEngine

    d, pm = soft_dir
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(d))
    code, out, err = run_cli(monkeypatch, capsys, "predict", "someone/my-prompt", "a good film", "--json")
    assert code == 0, err
    assert json.loads(out)["label"] == pm.predict(["a good film"])[0]["label"]
    test = write_jsonl(tmp_path / "test.jsonl", toy_rows(6, seed=2))
    code, out, err = run_cli(monkeypatch, capsys, "eval", "someone/my-prompt", "--data", test, "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 6 and json.loads(out)["artifact_bytes"] == artifact_bytes(d)
    eng = ServeEngine.from_artifacts(["someone/my-prompt"], start=False)
    try:
        assert list(eng.tasks) == ["my-prompt"]
    finally:
        eng.close()


def _hub_error(kind: str):
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/someone/x"))
    if kind == "not-found":
        return errors.RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)
    if kind == "revision":
        return errors.RevisionNotFoundError("404 Client Error: Revision Not Found", response=response)
    cause = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    try:
        raise errors.LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from cause
    except errors.LocalEntryNotFoundError as e:
        return e


@pytest.mark.parametrize("kind, what, fix", [
    ("not-found", "the Hugging Face Hub has no model repository 'someone/x'", "check the id"),
    ("revision", "has no revision 'nope'", "check the revision"),
    ("unreachable", "the Hugging Face Hub could not be reached to download 'someone/x'", "check the id and your connection"),
])
def test_hub_failures_say_what_went_wrong(kind, what, fix, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fake(repo_id, **kw):
        raise _hub_error(kind)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(ArtifactError) as e:
        load("someone/x@nope" if kind == "revision" else "someone/x")
    assert what in e.value.what and fix in e.value.fix and e.value.where.startswith("someone/x")


def test_a_hub_repository_without_prompt_json_is_not_an_artifact(monkeypatch, tmp_path):
    import huggingface_hub

    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "README.md").write_text("# a model\n")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path / "snap"))
    with pytest.raises(ArtifactError, match="holds no prompt.json: it is not a prompttune artifact"):
        load("someone/other-model")


def _cache_snapshot(artifact: Path, cache: Path) -> Path:
    """The artifact laid out as huggingface_hub caches a repository: snapshot files are links into blobs/."""
    repo = cache / "models--someone--my-prompt"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in artifact.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(f, blob)
        link = snap / f.relative_to(artifact)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def test_a_hub_cache_snapshot_loads_but_a_link_out_of_its_repository_is_refused(soft_dir, monkeypatch, tmp_path):
    import huggingface_hub

    d, pm = soft_dir
    snap = _cache_snapshot(d, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(snap))
    rows = toy_rows(4, seed=5)
    torch.testing.assert_close(load("someone/my-prompt").predict_log_probs(rows), pm.predict_log_probs(rows))
    (snap / "prompt.safetensors").unlink()
    shutil.copyfile(d / "prompt.safetensors", tmp_path / "elsewhere.safetensors")
    (snap / "prompt.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ArtifactError, match="points outside the artifact directory"):
        load("someone/my-prompt")


# ---- pushing ----------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi.create_repo / upload_folder replaced: what would be uploaded is recorded (files as upload_folder would
    pick them with its allow_patterns), nothing leaves the machine."""
    from huggingface_hub import CommitInfo, HfApi, RepoUrl
    from huggingface_hub.utils import filter_repo_objects

    seen = {"created": [], "uploads": []}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **kw):
        seen["created"].append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "repo_type": repo_type})
        full = repo_id if "/" in repo_id else f"me/{repo_id}"
        return RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, allow_patterns=None, repo_type=None, **kw):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        picked = sorted(filter_repo_objects(files, allow_patterns=allow_patterns))
        seen["uploads"].append({"repo_id": repo_id, "files": picked, "all": files, "message": commit_message, "folder": root,
                                "readme": (root / "README.md").read_text(encoding="utf-8")})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123", commit_message=commit_message or "",
                          commit_description="", oid="abc123")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return seen


def test_push_to_hub_uploads_the_artifact_and_its_card(fake_hub):
    pm = _model("soft-prompt", "someone/tiny-base")
    url = pm.push_to_hub("someone/my-prompt", private=True, commit_message="first prompt", metrics={"accuracy": 0.9, "n": 10})
    assert url == "https://huggingface.co/someone/my-prompt/commit/abc123"
    assert fake_hub["created"] == [{"repo_id": "someone/my-prompt", "private": True, "exist_ok": True, "repo_type": "model"}]
    (up,) = fake_hub["uploads"]
    assert up["repo_id"] == "someone/my-prompt" and up["message"] == "first prompt"
    assert up["files"] == up["all"] == ["README.md", "prompt.json", "prompt.safetensors"]
    assert 'prompttune.load("someone/my-prompt")' in up["readme"] and "prompttune predict someone/my-prompt" in up["readme"]
    assert "- `accuracy`: 0.9000" in up["readme"]
    assert not up["folder"].exists()  # the temporary directory is gone


def test_push_to_hub_of_a_method_that_trains_the_backbone_uploads_it(fake_hub):
    pm = _model("prompt-finetune", "someone/tiny-bert")
    pm.push_to_hub("my-prompt")  # in the token's namespace: the card names the full id
    (up,) = fake_hub["uploads"]
    assert up["repo_id"] == "me/my-prompt"
    assert {"README.md", "prompt.json", "prompt.safetensors", "backbone/config.json", "backbone/model.safetensors"} <= set(up["files"])
    assert all(f in ("README.md", "prompt.json", "prompt.safetensors") or f.startswith("backbone/") for f in up["files"])
    assert 'from_pretrained("me/my-prompt")' in up["readme"]


def test_save_pretrained_with_push_to_hub_keeps_the_local_copy_and_uploads_it(fake_hub, tmp_path):
    gm = _model("generation", "someone/tiny-base")
    out = gm.save_pretrained(tmp_path / "mine", push_to_hub=True, repo_id="someone/headlines")
    assert out == tmp_path / "mine" and (out / "prompt.json").is_file()
    (up,) = fake_hub["uploads"]
    assert up["repo_id"] == "someone/headlines" and up["files"] == ["README.md", "prompt.json", "prompt.safetensors"]
    assert up["readme"] == (out / "README.md").read_text()  # the local card already names the repository
    assert 'GenerationModel.from_pretrained("someone/headlines")' in (out / "README.md").read_text()


def test_a_run_directory_uploads_only_the_artifact(fake_hub, tmp_path):
    from prompttune.hub import upload_artifact

    pm = _model("soft-prompt", "someone/tiny-base")
    pm.save(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text("{}")
    (tmp_path / "run" / "train.log").write_text("")
    upload_artifact(tmp_path / "run", "someone/run")
    assert fake_hub["uploads"][0]["files"] == ["README.md", "prompt.json", "prompt.safetensors"]


def test_pushing_offline_or_to_a_bad_id_is_refused_with_the_fix(monkeypatch):
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    pm = _model("soft-prompt", "someone/tiny-base")
    with pytest.raises(ArtifactError, match="not a Hub repository id"):
        pm.push_to_hub("not a/valid/id")

    def offline(self, *a, **k):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ArtifactError) as e:
        pm.push_to_hub("someone/my-prompt")
    assert "offline mode is on" in e.value.what and e.value.where == "someone/my-prompt" and "HF_HUB_OFFLINE" in e.value.fix


def test_prompttune_push_uploads_a_run_with_a_card_that_names_the_repository(fake_hub, saved_tiny, tmp_path, monkeypatch, capsys):
    from prompttune.pipeline import run_training

    train, test = write_jsonl(tmp_path / "train.jsonl", toy_rows(8)), write_jsonl(tmp_path / "test.jsonl", toy_rows(6, seed=1))
    cfg = RunConfig.model_validate({
        "model": {"name": saved_tiny("llama")}, "prompt": {"template": "{text} Sentiment: {mask}", "verbalizer": VERB},
        "method": {"name": "zero-shot"}, "data": {"train": train, "test": test, "shots_per_class": None},
        "output": str(tmp_path / "run")})
    run_training(cfg, progress=False, log=lambda m: None)
    local = (tmp_path / "run" / "README.md").read_text()
    code, out, err = run_cli(monkeypatch, capsys, "push", tmp_path / "run", "someone/sentiment", "--private", "-m", "v1")
    assert code == 0, err
    assert "https://huggingface.co/someone/sentiment/commit/abc123" in out
    assert fake_hub["created"][0]["private"] is True
    (up,) = fake_hub["uploads"]
    assert up["files"] == ["README.md", "prompt.json", "prompt.safetensors"] and up["message"] == "v1"
    assert 'prompttune.load("someone/sentiment")' in up["readme"] and "train.jsonl" in up["readme"]  # the run's data too
    assert (tmp_path / "run" / "README.md").read_text() == local  # the local card is left as it was
    code, _, err = run_cli(monkeypatch, capsys, "push", tmp_path / "nowhere", "someone/x")
    assert code != 0 and "not a prompttune artifact" in err
