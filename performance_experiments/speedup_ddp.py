"""Data-parallel training-step benchmark: ``make speedup MODEL=opt-13b NGPU=2`` (torchrun, one process per GPU).

What it answers: how fast is a full SLoPe training step (compressed cuSPARSELt layers + ADAMWSparse) when DDP
averages its gradients across GPUs, against dense on the same GPUs, and how well does each scale.

Per (model, dtype) and variant (dense, slope, fst), in the same processes:

1. **one GPU** — rank 0 alone runs the step (no DDP, no communication) while the other ranks wait: the weak-scaling
   baseline, measured in the same process as the multi-GPU number.
2. **N GPUs** — a fresh replica on every rank (same seed), wrapped in DDP (`slope.distributed.wrap`), each rank
   with its own ``--batch`` sequences (weak scaling: the per-GPU batch stays, the global batch is N times larger).
   DDP averages every gradient — dense weights and the compressed ``values`` alike — overlapped with the backward.
   The step time is the slowest rank's median (a DDP step ends when the last rank's all-reduce does).
   After the steps every rank's parameters and buffers (masks included) are compared by sha256: replicas that
   drifted apart make the row's status an error, not a speed.

Rows (``speedup_ddp_<gpu>.csv``: the columns of `speedup.COLUMNS` plus ``world_size``): ``step (1 GPU)``,
``step (N GPUs, DDP)`` and its forward / backward / optimizer phases (rank 0), global ``throughput`` (tokens/s),
``weak-scaling efficiency`` = one-GPU step / N-GPU step (1.0 = perfect; the multi-GPU issue asks ≥ 0.9, i.e.
throughput ≥ 0.9·N). ``ratio_vs_dense``: dense time / variant time under the same world size.

Why a module of its own rather than a flag of `speedup`: the single-GPU sections (inference, isolated GEMMs,
memory accounting) have no data-parallel meaning, and a rank must never write the CSV (rank 0 does).
"""
from __future__ import annotations

import dataclasses
import sys
import time

import torch

from experiments.cli import parse_config
from experiments.results_io import write_rows
from slope import distributed as dist_utils

from . import e2e
from .speedup import COLUMNS, PRESETS, Run, apply_search_budget, checked_config, output_path
from .speedup_train import build_train_variant
from .timing import PhaseTimer, round_or_blank, stat_fields
from .reference import load_paper

DDP_COLUMNS = (*COLUMNS, "world_size")
SCALING_GOAL = 0.9  # per-GPU throughput kept, the weak-scaling goal (≥ 1.8x on 2 GPUs)


def _time_steps(run: Run, variant: e2e.Variant, input_ids: torch.Tensor, device) -> tuple[dict, bool]:
    timer = PhaseTimer(device)
    finite = True
    for _ in range(run.cfg.warmup + run.cfg.repeats):
        loss = e2e.train_step(variant, input_ids, device, timer)
        finite = finite and bool(torch.isfinite(loss))
        timer.end_repeat()
    return timer.stats(skip=run.cfg.warmup), finite


def variant_rows(run: Run, kind: str, ctx: dist_utils.DistributedContext, reference: dict) -> list[dict]:
    """Both measurements of one variant; rows on rank 0 (other ranks return [])."""
    n, device = ctx.world_size, ctx.device
    rank_ids = torch.randint(0, run.spec.vocab, run.train_ids.shape,
                             generator=torch.Generator().manual_seed(1000 + ctx.rank)).to(device)
    single = None
    if ctx.is_main:  # 1. one GPU, no DDP: the others wait at the barrier
        variant = build_train_variant(run, kind, device)
        single, _ = _time_steps(run, variant, rank_ids, device)
        del variant
        e2e.free_memory()  # the next replica is built at full size
    dist_utils.barrier(ctx)
    variant = build_train_variant(run, kind, device)  # 2. a fresh replica on every rank, averaged by DDP
    inner = variant.model
    variant.model = dist_utils.wrap(inner, ctx)
    multi, finite = _time_steps(run, variant, rank_ids, device)
    mismatches = dist_utils.replica_mismatches(variant.model, ctx)
    step_medians = dist_utils.all_gather_objects(multi["step"], ctx)
    name, note = variant.name, variant.note
    del variant, inner  # the DDP wrapper, its buckets and the replica go with them
    e2e.free_memory()
    if not ctx.is_main:
        return []
    slowest = max(step_medians, key=lambda s: s["median_ms"])
    base = dict(experiment="train-ddp", batch=run.cfg.batch, tokens=run.tokens, variant=name, adapter_rank="0",
                world_size=n)
    notes = "; ".join(filter(None, [note, f"per-GPU batch {run.cfg.batch} x {run.cfg.seq}; global batch "
                                          f"{n * run.cfg.batch}", "" if finite else "loss not finite (timing only)"]))
    status = "ok" if not mismatches else "error: replicas differ"
    if mismatches:
        notes += f"; after the DDP steps {len(mismatches)} tensors differ between ranks, e.g. {mismatches[:3]}"
    if kind == "dense":
        reference.update(single=single["step"]["median_ms"], multi=slowest["median_ms"],
                         phases={p: s["median_ms"] for p, s in multi.items()})

    def vs_dense(key: str, ms: float):
        ref = reference.get(key) if kind != "dense" else ms
        return round_or_blank(ref / ms if ref else "")

    rows = [run.row(base, phase="step (1 GPU)", metric="time", unit="ms", world_size=1, **stat_fields(single["step"]),
                    ratio_vs_dense=vs_dense("single", single["step"]["median_ms"]), status=status, note=notes),
            run.row(base, phase=f"step ({n} GPUs, DDP)", metric="time", unit="ms", **stat_fields(slowest),
                    ratio_vs_dense=vs_dense("multi", slowest["median_ms"]), status=status,
                    note=notes + "; the slowest rank's median")]
    for phase in ("forward", "backward", "optimizer"):
        stats = multi[phase]
        ref = reference.get("phases", {}).get(phase) if kind != "dense" else stats["median_ms"]
        rows.append(run.row(base, phase=f"{phase} ({n} GPUs, DDP; rank 0)", metric="time", unit="ms",
                            **stat_fields(stats), ratio_vs_dense=round_or_blank(ref / stats["median_ms"] if ref else ""),
                            status=status, note="includes the gradient all-reduce DDP could not hide behind it"
                            if phase == "backward" else ""))
    throughput = n * run.tokens / slowest["median_ms"] * 1e3
    rows.append(run.row(base, phase=f"throughput ({n} GPUs, DDP)", metric="throughput", unit="tokens/s",
                        median=round(throughput, 1), repeats=run.cfg.repeats,
                        ratio_vs_dense=vs_dense("multi", slowest["median_ms"]), status=status))
    efficiency = single["step"]["median_ms"] / slowest["median_ms"]
    rows.append(run.row(base, phase="weak-scaling efficiency", metric="ratio", unit="fraction",
                        median=round(efficiency, 4), repeats=run.cfg.repeats, ideal=1.0,
                        ideal_basis="perfect weak scaling (throughput N x one GPU)", status=status,
                        note=f"one-GPU step / {n}-GPU step = throughput / ({n} x one-GPU throughput); goal ≥ "
                             f"{SCALING_GOAL} ({'met' if efficiency >= SCALING_GOAL else 'missed'})"))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = checked_config(parse_config(PRESETS, __doc__.splitlines()[0], argv))
    apply_search_budget(cfg)
    ctx = dist_utils.init_distributed("cuda" if torch.device(cfg.device).type == "cuda" else "cpu")
    if not ctx.distributed:
        raise SystemExit("speedup_ddp measures data-parallel training: launch it with torchrun "
                         "(`make speedup MODEL=opt-13b NGPU=2`); one GPU is `make speedup`")
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)  # toy runs: several ranks share the cores (see speedup.main)
    # DDP keeps a bucket copy of every gradient: leave room for it when choosing how many blocks fit
    cfg = dataclasses.replace(cfg, device=str(ctx.device), memory_fraction=min(cfg.memory_fraction, 0.55),
                              sections=("train",))
    out = output_path(cfg, stem="speedup_ddp")
    paper, started, rows = load_paper(), time.monotonic(), []
    try:
        for model_name in cfg.models:
            for dtype_name in cfg.dtypes:
                run = Run(cfg, model_name, dtype_name, out, paper, started)
                if ctx.is_main:
                    print(f"speedup_ddp: {model_name} {dtype_name}: {run.blocks}/{run.spec.layers} blocks, "
                          f"{ctx.world_size} processes", file=sys.stderr)
                reference: dict = {}
                for kind in sorted(cfg.variants, key=e2e.VARIANTS.index):
                    new = variant_rows(run, kind, ctx, reference)
                    if new:
                        write_rows(out, new, columns=DDP_COLUMNS, config=cfg)
                        rows += new
                        for r in new:
                            if r["phase"].startswith(("step", "weak")):
                                print(f"{model_name:>11} {dtype_name:>9} {r['variant']:<24} {r['phase']:<24} "
                                      f"{r['median']:>12} {r['unit']:<9} x{r['ratio_vs_dense']} {r['status']}",
                                      file=sys.stderr)
                del run
    finally:
        dist_utils.shutdown(ctx)
    return rows


if __name__ == "__main__":
    main()
