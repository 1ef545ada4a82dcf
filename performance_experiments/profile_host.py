"""Where a one-token layer call spends its host time: cProfile of eager decode calls, dense beside SLoPe.

At one decode token an eager step is bound by the host (the GPU waits on each launch), so a SLoPe layer is only as
fast as the Python and launches it issues. `bench_inference`'s ``decode_host`` rows give the total per call; this
breaks it down by function, so that the next change targets the largest share.

    python -m performance_experiments.profile_host --output-dir $OUT [--shapes 5120x5120,20480x5120] [--calls 2000]

Writes ``host_profile.csv`` (one row per variant: host µs per call, measured as `experiments.bench.host_time_us`
does) and ``host_profile_<variant>.txt`` (the top functions by own time, per call).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path

import torch

from experiments.atomic import atomic_open
from experiments.bench import host_time_us
from experiments.results_io import write_rows
from performance_experiments.bench_inference import decode_host_layers

COLUMNS = ("shape", "dtype", "variant", "host_us_median", "host_us_min", "host_us_max")


def profile_calls(fn, x: torch.Tensor, calls: int, top: int = 25) -> str:
    """The top functions by own time over ``calls`` calls, in µs per call (syncs every 200 calls, so that the
    launch queue never fills and blocks a launch: their time is listed as the synchronize)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        fn(x)
        if i % 200 == 199:
            torch.cuda.synchronize()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # (file, line, name) -> (cc, nc, tt, ct)
    text = io.StringIO()
    text.write(f"{'own us/call':>12} {'cum us/call':>12} {'calls/call':>10}  function\n")
    for (file, line, name), (_, ncalls, own, cumulative, _) in rows:
        where = f"{Path(file).name}:{line}({name})" if line else name
        text.write(f"{own / calls * 1e6:12.2f} {cumulative / calls * 1e6:12.2f} {ncalls / calls:10.2f}  {where}\n")
    return text.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--shapes", default="5120x5120,20480x5120", help="d_out x d_in, comma-separated")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--ranks", default="r0,r1.56%")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.no_grad():
        for shape in args.shapes.split(","):
            d_out, d_in = (int(v) for v in shape.split("x"))
            x = torch.randn(1, d_in, device="cuda", dtype=dtype)
            for name, fn in decode_host_layers(d_out, d_in, dtype, args.ranks.split(",")).items():
                for _ in range(50):
                    fn(x)  # tunes, compiles and caches the launch before anything is timed
                torch.cuda.synchronize()
                us = sorted(host_time_us(lambda: fn(x)) for _ in range(5))
                label = f"{shape} {name}".replace(" ", "_").replace("%", "pct")
                with atomic_open(args.output_dir / f"host_profile_{label}.txt") as handle:
                    handle.write(f"{shape} {name}, {args.dtype}, 1 token: {us[2]:.1f} us per call (median of 5)\n"
                                 + profile_calls(fn, x, args.calls))
                rows.append({"shape": shape, "dtype": args.dtype, "variant": name, "host_us_median": round(us[2], 2),
                             "host_us_min": round(us[0], 2), "host_us_max": round(us[-1], 2)})
                print(f"{shape:>12} {name:28} {us[2]:8.1f} us", flush=True)
    write_rows(args.output_dir / "host_profile.csv", rows, columns=COLUMNS, append=False)  # atomic, with provenance


if __name__ == "__main__":
    main()
