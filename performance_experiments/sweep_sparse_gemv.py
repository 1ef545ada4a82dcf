"""Sweep the few-token 2:4 kernel's launch choices against dense F.linear on the GPU (`slope.kernels.sparse_gemv`).

    python -m performance_experiments.sweep_sparse_gemv --output results/sparse_gemv_variants_h100.csv

Per shape × token count × variant: the kernel's GPU time per call and its speedup over dense F.linear, both timed
the same way in the same process. A variant is a form (``fma``, ``dot``), whether the kept pairs are read as
integer words, the dot form's rebuild of W from them (`sparse_gemv.REBUILD`: ``prmt`` needs words), the FMA form's
products (`sparse_gemv.FMA_PRODUCTS`; both in the ``rebuild`` column) and the split-K program target
(`sparse_gemv.TARGET_PROGRAMS` for that form); each row notes the config the autotuner chose. Timing: ``calls``
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

COLUMNS = ("shape", "d_in", "d_out", "dtype", "tokens", "variant", "form", "words", "rebuild", "target_programs",
           "k_chunk_align", "config", "median", "iqr", "unit", "repeats", "speedup_vs_dense", "rel_error")
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


def variants(tokens: int, targets: list[int], aligns: list[int], words_tried=(False, True),
             rebuilds=("select",), fma_products=("kept",)) -> list[tuple[str, bool, str, int, int]]:
    """(form, words, rebuild, split-K program target, chunk rounding) per variant; rebuild is the dot form's
    `sparse_gemv.REBUILD` or the FMA form's `sparse_gemv.FMA_PRODUCTS`. A target above twice
    `sparse_gemv.MIN_PROGRAMS` also raises that threshold to the target, so that weights with more programs than
    the default threshold split too."""
    out = [("dot", words, rebuild, target, align) for words in words_tried for rebuild in rebuilds
           for target in targets for align in aligns if words or rebuild == "select"]
    if tokens == 1:
        out += [("fma", words, products, 264, align) for words in words_tried for products in fma_products
                for align in aligns]
    return out


def _chosen_config(form: str) -> str:
    """The config the form's autotuner chose last (BLOCK_N x BLOCK_K, warps, stages)."""
    from slope.kernels import sparse_gemv_triton as kernels

    kernel = kernels.sparse_gemv_fma_kernel if form == "fma" else kernels.sparse_gemv_kernel
    config = getattr(kernel, "best_config", None)
    if config is None:
        return ""
    return f"{config.kwargs['BLOCK_N']}x{config.kwargs['BLOCK_K']} w{config.num_warps} s{config.num_stages}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/sweep_sparse_gemv.csv")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--tokens", default="1,2,8,16,32")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--targets", default="264,528,1056", help="split-K program targets tried for the dot form")
    parser.add_argument("--chunk-aligns", default="512", help="split-K chunk roundings tried (K_CHUNK_ALIGN)")
    parser.add_argument("--words", default="false,true", help="read the kept pairs as values (false) / words (true)")
    parser.add_argument("--rebuilds", default="prmt,select", help="the dot form's rebuilds tried (REBUILD)")
    parser.add_argument("--fma-products", default="kept,positions",
                        help="the FMA form's products tried at one token (FMA_PRODUCTS)")
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
    words_tried = tuple(w.strip().lower() == "true" for w in args.words.split(","))
    rebuilds = tuple(args.rebuilds.split(","))
    if set(rebuilds) - set(gemv.REBUILDS):
        raise SystemExit(f"--rebuilds: choose from {gemv.REBUILDS}")
    fma_products = tuple(args.fma_products.split(","))
    if set(fma_products) - set(gemv.FMA_PRODUCTS_CHOICES):
        raise SystemExit(f"--fma-products: choose from {gemv.FMA_PRODUCTS_CHOICES}")
    defaults = (dict(gemv.TARGET_PROGRAMS), gemv.K_CHUNK_ALIGN, gemv.REBUILD, gemv.FMA_PRODUCTS, gemv.MIN_PROGRAMS)
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
                rows.append(dict(common, variant="dense F.linear", form="", words="", rebuild="", target_programs="",
                                 k_chunk_align="", config="", median=round(base["median"], 3),
                                 iqr=round(base["iqr"], 3), repeats=base["repeats"],
                                 speedup_vs_dense=1.0, rel_error=""))
                tried = variants(tokens, targets, aligns, words_tried, rebuilds, fma_products)
                for form, words, rebuild, target, align in tried:
                    gemv.TARGET_PROGRAMS[form], gemv.K_CHUNK_ALIGN = target, align
                    if form == "dot":
                        gemv.REBUILD = rebuild
                    else:
                        gemv.FMA_PRODUCTS = rebuild
                    gemv.MIN_PROGRAMS = max(defaults[4], target if target > 2 * defaults[4] else 0)
                    try:
                        y = gemv.sparse_gemv(x, values[0], nibbles[0], form=form, words=words)
                        error = ((y.float() - reference).norm() / reference.norm()).item()
                        config = _chosen_config(form)
                        stats = graph_us(lambda i: gemv.sparse_gemv(x, values[i], nibbles[i], form=form, words=words),
                                         args.copies)
                    finally:
                        gemv.TARGET_PROGRAMS.update(defaults[0])
                        gemv.K_CHUNK_ALIGN, gemv.REBUILD, gemv.FMA_PRODUCTS, gemv.MIN_PROGRAMS = defaults[1:]
                    name = f"{form}{' words' if words else ''}{' ' + rebuild if rebuild else ''} @{target}/{align}"
                    rows.append(dict(common, variant=name, form=form, words=words, rebuild=rebuild,
                                     target_programs=target, k_chunk_align=align, config=config,
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
