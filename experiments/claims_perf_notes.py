"""The seed's performance notes that only `performance_experiments/seed_notes.py` (``seed_notes_<gpu>.csv``) and
the data-parallel run (``speedup_ddp_<gpu>.csv``) measure: each becomes a P8 line of CLAIMS.md.

How each note is turned into a number the verdict rule can read (confirmed / refuted / mixed):

* "``torch.matmul`` does not write ``out`` in SpMM": the fraction of ``out`` that held the product after torch's
  own 2:4 tensor was multiplied with ``out=`` (goal ≤ 0: nothing written confirms the note).
* "... fixing it can give a slightly higher speedup": a tiled layer writing its tiles in place vs assigning each
  tile's own result (assigned time / in-place time, goal ≥ 1).
* "tiles on separate CUDA streams gave no speedup": one-stream time / streams time, eager and CUDA-graph replay
  apart (goal ≤ 1: no speedup confirms the note).
* "Hugging Face cannot train fully in fp16": optimizer steps that `transformers.Trainer(fp16=True)` ran on a model
  with fp16 weights (goal ≤ 0: none confirms the note); the library's own fp16 route is given beside it.
* "cuSPARSELt fails in distributed settings": SLoPe with the cuSPARSELt extension under DDP; the number is the
  2-GPU training step's speedup over dense under DDP (goal ≤ 0: no step finishing would confirm the note).
"""
from __future__ import annotations

import statistics

from .claims_perf_inputs import BENCH_KEYS, Inputs, NOT_GOAL
from .perf_evidence import Line, measure, pair, ratios, Sample, select, value


def _by_tokens(pairs: list[tuple]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for pr in sorted(pairs, key=lambda p: int(p[1]["tokens"])):
        out.setdefault(pr[1]["tokens"], []).extend(ratios([pr]))
    return out


def _per_tokens(by_tokens: dict[str, list[Sample]]) -> str:
    return "per token count (median): " + "; ".join(
        f"{t}: {statistics.median(s.value for s in v):.2f}×" for t, v in by_tokens.items())


def _samples(by_tokens: dict[str, list[Sample]]) -> list[Sample]:
    return [s for v in by_tokens.values() for s in v]


def out_lines(inp: Inputs) -> list[Line]:
    absent = inp.absent("notes")
    probes = select(inp.notes, benchmark="out_probe")
    newest = {r["variant"] + r["dtype"]: r for r in probes}  # file order: the latest run of each call wins
    why = "; ".join(f"{r['variant']} ({r['dtype']}): {r['note']}" for r in newest.values())
    lines = [Line("P8", "\"matmul with out= does not write the output\": fraction of `out` holding the product after "
                        "torch's 2:4 tensor (`to_sparse_semi_structured`) was multiplied with out=",
                  measure([value(r) for r in newest.values()], "calls × dtypes"), 0.0, "≤ 0 (nothing written)",
                  higher=False, unit="", note=True, absent=absent, why=why)]
    assigned = _by_tokens(pair(select(inp.notes, benchmark="out_write", variant="tiled, assigned (reference code)"),
                               select(inp.notes, benchmark="out_write", variant="tiled, in place (spmm_out)"),
                               BENCH_KEYS))
    lines.append(Line("P8", "\"... fixing it would help slightly\": tiled layer, assigned time / in-place time "
                            "(`spmm_out` writes each tile's column block)", measure(_samples(assigned),
                                                                                   "shapes × dtypes × tokens"),
                      NOT_GOAL, "≥ 1 (in place faster)", note=True, absent=absent, why=_per_tokens(assigned)))
    return lines


def stream_lines(inp: Inputs) -> list[Line]:
    lines = []
    for how, one, many in (("eager", "tiled, in place (spmm_out)", "tiled, one stream per tile"),
                           ("CUDA-graph replay", "tiled, one stream (graph replay)",
                            "tiled, one stream per tile (graph replay)")):
        found = _by_tokens(pair(select(inp.notes, benchmark="tile_streams", variant=one),
                                select(inp.notes, benchmark="tile_streams", variant=many), BENCH_KEYS))
        lines.append(Line("P8", f"\"tiles on separate CUDA streams gave no speedup\": one-stream time / streams time, "
                                f"{how}", measure(_samples(found), "shapes × dtypes × tokens"), NOT_GOAL,
                          "≤ 1 (no speedup)", higher=False, note=True, absent=inp.absent("notes"),
                          why=_per_tokens(found)))
    return lines


def hf_fp16_line(inp: Inputs) -> Line:
    rows = select(inp.notes, benchmark="hf_fp16")
    trainer = [r for r in rows if r["variant"].startswith("transformers.Trainer")]
    ours = [r for r in rows if r["variant"].startswith("slope.optim")]
    why = "; ".join(f"{r['variant']}: {r['note']}" for r in trainer[-1:] + ours[-1:])
    return Line("P8", "\"HF Trainer cannot train fully in FP16\": optimizer steps `transformers.Trainer(fp16=True)` "
                      "ran on a model with fp16 weights", measure([value(r) for r in trainer[-1:]]), 0.0,
                "≤ 0 (none ran)", higher=False, unit="", note=True, absent=inp.absent("notes"), why=why)


def distributed_line(inp: Inputs) -> Line:
    steps = [r for r in select(inp.ddp, status="ok", phase="step (2 GPUs, DDP)") if r["variant"] != "fst (simulated)"]
    found = pair([r for r in steps if r["variant"] == "dense"],
                 [r for r in steps if r["variant"] == "slope" and "kernels: extension" in r["note"]],
                 ("model", "dtype", "num_blocks", "batch", "seq"))
    return Line("P8", "\"cuSPARSELt fails in distributed settings\": SLoPe with the cuSPARSELt extension trained "
                      "under DDP (NCCL, 2 GPUs), step speedup over dense under DDP", measure(ratios(found)), 0.0,
                "≤ 0 (no step finishes)", higher=False, note=True, absent=inp.absent("ddp"),
                why="every SLoPe `values` gradient is a DDP parameter, averaged in DDP's buckets "
                    "(`slope.distributed`); `ddp_check_small.csv` also trains the compressed layers on 2 GPUs")
