"""`@mlflow_cached` hits and misses beside `@robust_cacheable`'s, with a real MLflow sqlite store.

    python benches/bench_mlflow.py            # the full run
    python benches/bench_mlflow.py --quick    # smoke test: fewer repeats

The function trains a 20-tree random forest on a labelled feature frame (100,000 rows x 5
columns; the key hashes all of it) and returns ``(model, metrics)``, as the guides write it.

- ``hit``: a call whose result is cached. ``@mlflow_cached`` adds the hit's own run with
  ``log_hits=True`` (one run created, its params and metrics logged, the run ended: writes to
  the tracking store) and nothing but unwrapping with ``log_hits=False``.
- ``miss``: a call that trains (each repeat with another ``random_state``, so each is a miss).
  ``@mlflow_cached`` adds the run, its params (with the frames' fingerprints), metrics and the
  model (cloudpickle, explicit requirements).

Medians over rounds that call each variant once, after warm-ups; the cache and the tracking
store live in a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    fmt_seconds,
    machine_facts,
    markdown_table,
    median,
    print_facts,
    time_calls,
)

import afml_cache
from afml_cache import mlflow_cached, robust_cacheable, setup_mlflow_cache


def labelled_frame(rows: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    features = pd.DataFrame(
        rng.normal(size=(rows, 5)),
        index=pd.date_range("2020-01-01", periods=rows, freq="min"),
        columns=["sma", "rsi", "vol", "skew", "ret"],
    )
    labels = pd.Series(np.where(features["sma"] + features["ret"] > 0, 1, -1), index=features.index)
    return features, labels


def train_model(features: pd.DataFrame, labels: pd.Series, params: dict[str, Any]) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    # Trained on a slice: the benchmark measures the cache and the tracking, not the forest.
    model = RandomForestClassifier(**params, n_estimators=20, max_depth=4)
    model.fit(features.iloc[:2000], labels.iloc[:2000])
    return model, {"accuracy": model.score(features.iloc[:2000], labels.iloc[:2000])}


def variants() -> dict[str, Callable[..., Any]]:
    return {
        "robust_cacheable": robust_cacheable(train_model),
        "mlflow_cached, log_hits=False": mlflow_cached(log_hits=False)(train_model),
        "mlflow_cached, log_hits=True": mlflow_cached(log_hits=True)(train_model),
    }


def _added(seconds: float, reference: float) -> str:
    """What a variant adds to robust_cacheable's time (negative: within the noise)."""
    sign = "-" if seconds < reference else "+"
    return f"{sign}{fmt_seconds(abs(seconds - reference))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    args = parser.parse_args(argv)
    hit_repeats, miss_repeats = (5, 2) if args.quick else (30, 5)
    # MLflow's own notices (database migrations, artifact progress) are not the benchmark's.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - before quieting its logger, which importing configures

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    print("# afml-cache MLflow benchmark\n")
    print_facts(machine_facts(["numpy", "pandas", "afml_cache", "mlflow", "sklearn"]))
    root = tempfile.mkdtemp(prefix="afml-bench-mlflow-")
    previous = os.getcwd()
    os.chdir(root)
    try:
        afml_cache.configure(directory=os.path.join(root, "cache"))
        setup_mlflow_cache(
            "bench",
            tracking_uri=f"sqlite:///{root}/mlflow.db",
            artifact_location=os.path.join(root, "artifacts"),
        )
        features, labels = labelled_frame(100_000)
        functions = variants()
        hits: dict[str, list[float]] = {name: [] for name in functions}
        misses: dict[str, list[float]] = {name: [] for name in functions}
        for fn in functions.values():
            fn(features, labels, {"random_state": 0})  # computes and stores: later calls hit
            fn(features, labels, {"random_state": 0})  # warms the hit path (MLflow's, too)
        # Rounds that time each variant once, so that a change in the machine's load
        # falls on all of them alike.
        for round_ in range(hit_repeats):
            print(f"  hits, round {round_ + 1}/{hit_repeats}", file=sys.stderr, flush=True)
            for name, fn in functions.items():
                hits[name] += time_calls(
                    lambda fn=fn: fn(features, labels, {"random_state": 0}), repeats=1, warmup=0
                )
        for round_ in range(miss_repeats):
            print(f"  misses, round {round_ + 1}/{miss_repeats}", file=sys.stderr, flush=True)
            # Both mlflow_cached variants key calls alike: each misses with seeds of its own.
            for number, (name, fn) in enumerate(functions.items()):
                seed = {"random_state": 1000 * number + round_ + 1}
                misses[name] += time_calls(
                    lambda fn=fn, seed=seed: fn(features, labels, seed), repeats=1, warmup=0
                )
        reference_hit = median(hits["robust_cacheable"])
        reference_miss = median(misses["robust_cacheable"])
        rows = [
            [
                name,
                fmt_seconds(median(hits[name])),
                _added(median(hits[name]), reference_hit),
                fmt_seconds(median(misses[name])),
                _added(median(misses[name]), reference_miss),
            ]
            for name in functions
        ]
        uncached = median(
            time_calls(
                lambda: train_model(features, labels, {"random_state": 0}),
                repeats=miss_repeats,
                warmup=1,
            )
        )
        fingerprinting = median(
            time_calls(lambda: afml_cache.fingerprint(features), repeats=hit_repeats, warmup=1)
        )
    finally:
        os.chdir(previous)
        afml_cache.flush_writes()
        shutil.rmtree(root, ignore_errors=True)

    headers = ["decorator", "hit", "hit - robust hit", "miss", "miss - robust miss"]
    print(markdown_table(headers, rows))
    print(
        f"\nThe function uncached takes {fmt_seconds(uncached)}; fingerprinting the feature "
        f"frame takes {fmt_seconds(fingerprinting)}. Tracking store: sqlite on local disk."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
