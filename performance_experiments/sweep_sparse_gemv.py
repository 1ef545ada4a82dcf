"""Sweep the few-token 2:4 kernel's launch choices against dense F.linear on the GPU (`slope.kernels.sparse_gemv`).

    python -m performance_experiments.sweep_sparse_gemv --output results/sparse_gemv_variants_h100.csv

Per shape × token count × variant: the kernel's GPU time per call and its speedup over dense F.linear, both timed
the same way in the same process. A variant is a form (``fma``, ``dot``), whether the kept pairs are read as
integer words, and the split-K program target (`sparse_gemv.TARGET_PROGRAMS` for that form). Timing: ``calls``
calls captured in one CUDA graph, the replay timed (median of 6 after a warm-up replay), so host cost is out;
the calls rotate over ``copies`` weights of each shape so that no call finds its weight in L2 (a 5120² weight is
33 MB compressed, an H100's L2 50 MB). This is how the defaults in `slope.kernels.sparse_gemv` were chosen.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from experiments.bench import capture_graph
from experiments.results_io import write_rows
from performance_experiments.shapes import MLP_SHAPES

COLUMNS = ("shape", "d_in", "d_out", "dtype", "tokens", "variant", "form", "words", "target_programs",
           "k_chunk_align", "median",
           "iqr", "unit", "repeats", "speedup_vs_dense", "rel_error")
SHAPES = {**MLP_SHAPES, "opt-13b.attn": (5120, 5120)}  # OPT-13B q/k/v/out_proj


def graph_us(fn, copies: int, calls: int = 20, repeats: int = 6) -> dict:
    """GPU µs per call of ``fn(i)`` (i = which weight copy), from CUDA-graph replays."""
    graph, _ = capture_graph(lambda: [fn(i % copies) for i in range(calls)], warmup=1)
    times = []
    for _ in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    times = sorted(times[1:])
    return {"median": statistics.median(times), "iqr": times[(3 * len(times)) // 4] - times[len(times) // 4],
            "repeats": len(times)}


def variants(tokens: int, targets: list[int], aligns: list[int]) -> list[tuple[str, bool, int, int]]:
    out = [("dot", words, target, align) for words in (False, True) for target in targets for align in aligns]
    if tokens == 1:
        out += [("fma", words, 264, align) for words in (False, True) for align in aligns]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/sweep_sparse_gemv.csv")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--tokens", default="1,2,8,16,32")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--targets", default="264,528,1056", help="split-K program targets tried for the dot form")
    parser.add_argument("--chunk-aligns", default="512", help="split-K chunk roundings tried (K_CHUNK_ALIGN)")
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args(argv)
    from slope.kernels import nm_pack
    from slope.kernels import sparse_gemv as gemv
    from slope.masks import row_mask

    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        raise SystemExit(f"--shapes: unknown {sorted(unknown)}; choose from {sorted(SHAPES)}")
    targets = [int(t) for t in args.targets.split(",")]
    aligns = [int(a) for a in args.chunk_aligns.split(",")]
    defaults = dict(gemv.TARGET_PROGRAMS), gemv.K_CHUNK_ALIGN
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for shape in args.shapes.split(","):
            d_in, d_out = SHAPES[shape]
            dense, values, nibbles = [], [], []
            for _ in range(args.copies):
                weight = torch.randn(d_out, d_in, device="cuda", dtype=dtype)
                mask = row_mask(weight, 2, 4)
                dense.append(weight * mask)
                nibbles.append(nm_pack.pack_nibbles(mask))
                values.append(nm_pack.gather_kept(weight, nibbles[-1]).contiguous())
            for tokens in map(int, args.tokens.split(",")):
                x = torch.randn(tokens, d_in, device="cuda", dtype=dtype)
                reference = x.float() @ dense[0].float().t()
                base = graph_us(lambda i: F.linear(x, dense[i]), args.copies)
                common = dict(shape=shape, d_in=d_in, d_out=d_out, dtype=dtype_name, tokens=tokens, unit="us")
                rows.append(dict(common, variant="dense F.linear", form="", words="", target_programs="", k_chunk_align="",
                                 median=round(base["median"], 3), iqr=round(base["iqr"], 3), repeats=base["repeats"],
                                 speedup_vs_dense=1.0, rel_error=""))
                tried = variants(tokens, targets, aligns)
                for form, words, target, align in tried:
                    gemv.TARGET_PROGRAMS[form], gemv.K_CHUNK_ALIGN = target, align
                    try:
                        y = gemv.sparse_gemv(x, values[0], nibbles[0], form=form, words=words)
                        error = ((y.float() - reference).norm() / reference.norm()).item()
                        stats = graph_us(lambda i: gemv.sparse_gemv(x, values[i], nibbles[i], form=form, words=words),
                                         args.copies)
                    finally:
                        gemv.TARGET_PROGRAMS.update(defaults[0])
                        gemv.K_CHUNK_ALIGN = defaults[1]
                    rows.append(dict(common, variant=f"{form}{' words' if words else ''} @{target}/{align}", form=form,
                                     words=words, target_programs=target, k_chunk_align=align,
                                     median=round(stats["median"], 3),
                                     iqr=round(stats["iqr"], 3), repeats=stats["repeats"],
                                     speedup_vs_dense=round(base["median"] / stats["median"], 4),
                                     rel_error=f"{error:.2e}"))
                print(f"{dtype_name} {shape} {tokens} tokens: " + ", ".join(
                    f"{r['variant']} {r['speedup_vs_dense']}" for r in rows[-len(tried):]),
                    flush=True)
                # each token count lands at once (appended): a run cut short by a time limit keeps what it measured
                write_rows(args.output, rows[-len(tried) - 1:], columns=COLUMNS, config=vars(args))
    print(f"wrote {len(rows)} rows to {args.output}")


if __name__ == "__main__":
    main()
