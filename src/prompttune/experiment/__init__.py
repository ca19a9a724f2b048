"""``prompttune experiment``: a grid of tasks x methods x models x shots x seeds, one run per cell (:mod:`.grid`),
PEFT's own prompt tuning and LoRA as anchors beside prompttune's methods (:mod:`.anchors`), and the results table,
paired tests and plot (:mod:`.results`)."""

from .anchors import ANCHORS, run_anchor, train_anchor
from .grid import CELL_JSON, Cell, Grid, cell_done, cell_fingerprint, expand, read_grid, run_cell, run_grid
from .results import PLOT_PNG, RESULTS_JSON, RESULTS_MD, paired, summarise, tally, write_results

__all__ = ["ANCHORS", "CELL_JSON", "PLOT_PNG", "RESULTS_JSON", "RESULTS_MD", "Cell", "Grid", "cell_done", "cell_fingerprint",
           "expand", "paired", "read_grid", "run_anchor", "run_cell", "run_grid", "summarise", "tally", "train_anchor",
           "write_results"]
