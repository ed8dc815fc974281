"""Benchmark: what the store's checks cost — write, open, verify and a full read of a random store.

    python benchmarks/store.py [--problems 2000] [--positions 7] [--layers 4] [--dim 2048]

float16, as extraction writes it (default: 2000 × 7 × 4 × 2048 hidden states and 6 latent inputs
per problem, 279 MB in 8 shards of 256). `write_store` includes the NaN/inf check and hashing
every shard; `open_store` reads headers, ids and records.parquet (no shard hashed); `verify_store`
hashes every shard too.
Files are in the page cache (just written), so the times are CPU, not disk. Not a test: the
figures go into `benchmarks/results/<name>.json` (default `store`), which the docs render.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from opcircuits.store import open_store, verify_store, write_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--positions", type=int, default=7)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--result", default="store", help="result file name under benchmarks/results/")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, P, L, D = args.problems, args.positions, args.layers, args.dim
    hidden = rng.standard_normal((n, P, L, D), dtype=np.float32)
    latent = rng.standard_normal((n, P - 1, D), dtype=np.float32)
    records = [{"id": f"test_{i}", "category": "mixed"} for i in range(n)]
    positions = ["bot"] + [f"latent_{k}" for k in range(1, P)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        times = {}
        t = time.perf_counter()
        write_store(path, hidden, records, list(range(L)), positions, latent)
        times["write_store"] = time.perf_counter() - t
        for name, fn in (
            ("open_store", lambda: open_store(path)),
            ("verify_store", lambda: verify_store(path)),
            ("open + hidden()", lambda: open_store(path).hidden()),
        ):
            t = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t
        size = sum(p.stat().st_size for p in path.iterdir()) / 1e6
    print(f"store: {n} problems x {P} positions x {L} layers x {D}, float16, {size:.0f} MB")
    for name, sec in times.items():
        print(f"{name:>16}: {sec:7.3f} s")
    from results import write_result

    figures = {"problems": n, "positions": P, "layers": L, "dim": D, "store_mb_float16": size}
    figures.update({_key(name): round(sec, 4) for name, sec in times.items()})
    notes = "Files in the page cache (just written): CPU time, not disk."
    print(f"wrote {write_result(args.result, 'store', figures, notes=notes)}")


def _key(timer: str) -> str:
    """ "open + hidden()" → "open_and_hidden_s"."""
    words = timer.replace("+", "and").replace("()", "").split()
    return "_".join(words) + "_s"


if __name__ == "__main__":
    main()
