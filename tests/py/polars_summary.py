"""What a user computes from vlal's results with Polars (the README's snippet): accuracy mean and
sample std, distinct seeds and mean labels per (pipeline, trainer, strategy, round), in key order,
as JSON lines. Used by tests/pipeline.rs to check `vlal report`'s summary.

usage: polars_summary.py RESULTS_DIR [PIPELINE ...]
"""
import json
import sys

import polars as pl

results, pipelines = sys.argv[1], sys.argv[2:]
df = pl.scan_parquet(f"{results}/**/*.parquet").collect()
if pipelines:
    df = df.filter(pl.col("pipeline").is_in(pipelines))
keys = ["pipeline", "trainer", "strategy", "round"]
out = (
    df.group_by(keys)
    .agg(
        pl.col("accuracy").mean().alias("acc_mean"),
        pl.col("accuracy").std(ddof=1).fill_null(0.0).alias("acc_std"),
        pl.col("seed").n_unique().alias("seeds"),
        pl.col("n_labeled").mean().alias("n_labeled"),
    )
    .sort(keys)
)
for row in out.iter_rows(named=True):
    print(json.dumps(row))
