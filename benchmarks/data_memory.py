"""Peak memory of few-shot sampling from a large Parquet file: every row made into a dict vs rows made when read.

Writes a Parquet file of N synthetic reviews (two labels), then, each in a fresh process, measures the peak resident
memory (``VmHWM``) and the time of:

- ``all rows``: ``prompttune.data.load_rows(FILE)``, every row as a Python dict (what reading a file of N rows and then
  sampling from it costs; CSV and JSON files are read this way);
- ``few-shot``: the train / dev / test splits of a run with ``data.train: FILE``, 16 shots per class and a test sample
  of 100 rows (``ClassificationTask.load_splits``: the label column is read, and only the rows drawn become dicts);
- ``baseline``: importing prompttune (torch included) and ``datasets`` and opening the file, nothing read.

    .venv/bin/python benchmarks/data_memory.py --rows 1000000 --out benchmarks/results/data-memory

The Arrow copy ``datasets`` makes of the Parquet file on first use is in a fresh cache directory each run, and the
first process builds it; its time is reported apart (``convert``), and the measured processes reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
start = time.perf_counter()
from prompttune import data as D
from prompttune.config import RunConfig
from prompttune.tasks.classification import ClassificationTask  # (imports torch) every mode imports the same
mode, path = sys.argv[1], sys.argv[2]
if mode == "convert" or mode == "baseline":
    rows = D.open_rows(path)
    n = len(rows)
elif mode == "all rows":
    n = len(D.load_rows(path))
else:
    cfg = RunConfig.model_validate({"data": {"train": path, "test": path, "shots_per_class": 16, "test_size": 100}})
    n = sum(map(len, ClassificationTask.load_splits(cfg)))
# VmHWM: this process's own peak (ru_maxrss would keep the parent's peak across fork + exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": n, "seconds": time.perf_counter() - start, "peak_mib": hwm / 1024}))
"""


def write_parquet(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = "good great fine bad awful poor movie film plot actor story was very not".split()
    texts = [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(12)) + f" #{i}" for i in range(n)]
    labels = ["positive" if i % 2 else "negative" for i in range(n)]
    pq.write_table(pa.table({"text": texts, "label": labels}), path)


def measure(mode: str, path: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/data-memory"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reviews.parquet"
        write_parquet(path, args.rows)
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        results = {"rows": args.rows, "parquet_bytes": path.stat().st_size, "convert": measure("convert", path, env)}
        for mode in ("baseline", "few-shot", "all rows"):
            runs = [measure(mode, path, env) for _ in range(args.repeats)]
            results[mode] = {"peak_mib": max(r["peak_mib"] for r in runs), "seconds": min(r["seconds"] for r in runs),
                             "rows": runs[0]["rows"], "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Few-shot sampling from a {args.rows:,}-row Parquet file ({results['parquet_bytes'] / 2**20:.1f} MiB)", "",
             "| what | rows returned | peak memory (MiB) | time (s) |", "|---|---|---|---|"]
    for mode in ("baseline", "few-shot", "all rows"):
        r = results[mode]
        lines.append(f"| {mode} | {r['rows']:,} | {r['peak_mib']:.0f} | {r['seconds']:.1f} |")
    lines += ["", f"First use converts the file to Arrow in the datasets cache: {results['convert']['seconds']:.1f} s, "
                  f"peak {results['convert']['peak_mib']:.0f} MiB."]
    (args.out / "data_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
