"""`prompttune train` under `accelerate launch` with 2 CPU processes (gloo): the same result as one process with the
same global batch, and only rank 0 writes. FSDP / DeepSpeed smoke tests where this torch / install allows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import toy_rows, write_csv

SRC = str(Path(__file__).resolve().parent.parent / "src")
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
# Measured: soft-prompt rows differ by 3.9e-7 (max abs) and dev losses by 1e-7 between 1 process x batch 8 and
# 2 processes x batch 4: only the order of the gradient sums differs.
TOLERANCE = 1e-5


@pytest.fixture
def run_config(tmp_path, saved_tiny):
    cfg = {"model": {"name": saved_tiny("llama")},
           "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": {"negative": "bad", "positive": "good"}},
           "method": {"name": "soft-prompt", "num_tokens": 4},
           "data": {"train": write_csv(tmp_path / "train.csv", toy_rows(120, seed=1)), "test": write_csv(tmp_path / "test.csv", toy_rows(40, seed=2)),
                    "shots_per_class": 16},
           "train": {"max_steps": 10, "lr": 0.05, "eval_every": 5, "progress": False},
           "output": str(tmp_path / "unused")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "run.yaml"


def _launch(args: list[str], cwd: Path, *, extra_env: dict | None = None, timeout: int = 120):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([ACCELERATE, "launch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed")
def test_two_processes_match_one_with_the_same_global_batch_and_only_rank0_writes(tmp_path, run_config):
    from safetensors.torch import load_file

    from prompttune.config import load_config
    from prompttune.pipeline import run_training

    one = run_training(load_config(run_config, ["train.batch_size=8", f"output={tmp_path / 'one'}"]), progress=False, log=lambda m: None)

    work = tmp_path / "launch"
    work.mkdir()
    res = _launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "prompttune", "train", str(run_config), "--set", "train.batch_size=4", "-o", str(tmp_path / "two"), "--json"],
                  work)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, res.stdout  # only rank 0 prints the result ...
    assert res.stderr.count("data: 32 train") == 1 and res.stderr.count("test accuracy") == 1  # ... and logs
    two = json.loads(lines[0])

    assert _files(tmp_path / "two") == _files(tmp_path / "one")  # the same artifacts, no temporaries left by a second writer
    assert not any(work.iterdir())  # nothing written elsewhere by either process
    a, b = load_file(str(tmp_path / "one" / "prompt.safetensors")), load_file(str(tmp_path / "two" / "prompt.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < TOLERANCE, k
    h1, h2 = one["training"]["history"], two["training"]["history"]
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [0, 5, 10]
    assert all(abs(x["loss"] - y["loss"]) < TOLERANCE for x, y in zip(h1, h2))
    assert h1[-1]["loss"] < h1[0]["loss"] - 0.05  # it trained: a test that compares two untrained runs would prove nothing
    assert two["accuracy"] == one["accuracy"] and two["training"]["steps"] == one["training"]["steps"] == 10


def test_a_multi_process_launch_that_accelerate_sees_as_one_process_is_refused(monkeypatch, tmp_path, run_config):
    from prompttune.config import load_config
    from prompttune.errors import ConfigError
    from prompttune.pipeline import run_training

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it, without a process group accelerate can use
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=1"):
        run_training(load_config(run_config, [f"output={tmp_path / 'x'}"]), progress=False, log=lambda m: None)


def test_bf16_mixed_precision_trains_and_saves_float32_prompt_rows(tmp_path, run_config):
    from safetensors.torch import load_file

    from prompttune.config import load_config
    from prompttune.pipeline import run_training

    # a full-precision run first: accelerate keeps one state per process, and a later run may ask for another precision
    run_training(load_config(run_config, ["train.max_steps=2", f"output={tmp_path / 'fp32'}"]), progress=False, log=lambda m: None)
    res = run_training(load_config(run_config, ["train.mixed_precision=bf16", "train.max_steps=20", f"output={tmp_path / 'bf16'}"]),
                       progress=False, log=lambda m: None)
    h = res["training"]["history"]
    assert min(x["loss"] for x in h[1:]) < h[0]["loss"] - 0.1  # measured on CPU autocast: 1.08 -> 0.89
    t = load_file(str(tmp_path / "bf16" / "prompt.safetensors"))
    assert all(v.dtype.is_floating_point and v.dtype.itemsize == 4 for v in t.values())


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


_EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "accelerate"


@pytest.mark.parametrize("config,needs", [
    ("fsdp.yaml", None),
    ("deepspeed-zero2.yaml", "deepspeed"),
])
def test_sharded_paths_match_one_process(tmp_path, run_config, config, needs):
    import importlib.util

    if _gpus() < 2:
        pytest.skip(f"{config}: accelerate applies FSDP and DeepSpeed only on GPU process groups (on CPU workers it fails with "
                    "'no available devices' or falls back to DDP), and this machine has fewer than 2 GPUs")
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{config}: {needs} is not installed (PyPI has only a source package that builds against a CUDA torch)")
    from safetensors.torch import load_file

    from prompttune.config import load_config
    from prompttune.pipeline import run_training

    run_training(load_config(run_config, ["train.batch_size=8", f"output={tmp_path / 'one'}"]), progress=False, log=lambda m: None)
    res = _launch(["--config_file", str(_EXAMPLES / config), "--num_processes", "2", "--mixed_precision", "no", "-m", "prompttune",
                   "train", str(run_config), "--set", "train.batch_size=4", "-o", str(tmp_path / "two"), "--json"], tmp_path,
                  extra_env={"ACCELERATE_USE_CPU": "0"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one" / "prompt.safetensors")), load_file(str(tmp_path / "two" / "prompt.safetensors"))
    for k in a:
        assert (a[k] - b[k].to(a[k].device)).abs().max().item() < 1e-3, k


@pytest.mark.parametrize("n,batch,world", [(26, 8, 2), (9, 4, 2), (23, 6, 3), (64, 8, 2)])
def test_process_shares_make_up_the_single_process_batches(n, batch, world):
    from itertools import islice

    from prompttune.train import _batches_for_epoch, _EpochBatches, _fold_small

    lengths = [(i * 7) % 11 + 1 for i in range(n)]
    epochs = [_batches_for_epoch(lengths, batch, 3, e) for e in range(2)]  # what one process trains on
    folded = [_fold_small(b, world) for b in epochs]
    for single, f in zip(epochs, folded):
        assert sum(f, []) == sum(single, [])  # the same rows in the same order ...
        assert all(len(b) >= world for b in f)  # ... with every batch big enough to give each process a row
        if all(len(b) >= world for b in single):
            assert f == single
    total = sum(len(f) for f in folded)
    shares = [list(islice(iter(_EpochBatches(lengths, batch, 3, rank=r, world=world)), total)) for r in range(world)]
    assert [sum((s[k] for s in shares), []) for k in range(total)] == folded[0] + folded[1]
    assert all(share for s in shares for share in s)


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_p_tuning_encoder_starts_the_same_for_the_same_seed(encoder):
    import torch

    from conftest import tiny_backbone
    from prompttune.model import PromptModel

    def make(seed):
        torch.manual_seed(1000 + seed * 7)  # whatever the global generator holds: the seed alone decides
        return PromptModel(tiny_backbone("llama"), "{soft*4} {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"},
                           "soft-prompt", method_options={"encoder": encoder}, seed=seed).method.state_dict()

    a, b, c = make(0), make(0), make(1)
    assert all(torch.equal(a[k], b[k]) for k in a)  # so the processes of a launch, and reruns, agree
    assert any(not torch.equal(a[k], c[k]) for k in a if "lstm" in k or "mlp.0" in k)


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed")
def test_an_experiment_under_two_processes_records_what_one_process_does(tmp_path, run_config):
    from prompttune.experiment import expand, run_grid

    raw = yaml.safe_load(run_config.read_text())
    raw.pop("method")
    raw["train"].update(max_steps=6, eval_every=3)
    raw["grid"] = {"methods": ["zero-shot", {"name": "soft-prompt", "num_tokens": 4}], "shots": [4, 8], "seeds": [0]}
    one = run_grid(expand({**raw, "train": {**raw["train"], "batch_size": 8}, "output": str(tmp_path / "one")}), progress=False,
                   log=lambda m: None)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "batch_size": 4}, "output": str(tmp_path / "two")}))
    work = tmp_path / "launch"
    work.mkdir()
    res = _launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "prompttune", "experiment", str(tmp_path / "grid.yaml"), "--json"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1  # rank 0 alone reports
    two = json.loads(lines[0])
    assert [r["cell"] for r in two["runs"]] == [r["cell"] for r in one["runs"]]
    assert [r["accuracy"] for r in two["runs"]] == [r["accuracy"] for r in one["runs"]]
    assert not any(work.iterdir())
