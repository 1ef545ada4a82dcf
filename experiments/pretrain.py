"""GPT-2 pretraining on the offline corpus: dense, SLoPe or Extended SR-STE, lazy adapters, exact resume.

    python -m experiments.pretrain --preset tiny --method slope --adapter-rank 2.1% --out runs/gpt2-tiny-slope

* Model: transformers GPT-2 built from a named preset (``tiny`` for 2 CPU cores, ``small`` for a few minutes on
  one H100, ``paper`` = GPT-2 small with the paper's hyper-parameters), vocabulary from the corpus tokenizer.
* Method: ``dense``; ``slope`` (simulated double-pruned N:M; ``--sparsity 2:4`` or ``2:4-2:8`` for first half /
  second half of the blocks); ``srste`` (Extended SR-STE). Lazy adapters of ``--adapter-rank`` are added for the
  final ``--adapter-fraction`` of the steps, with their own AdamW. ``--compress`` (CUDA, SLoPe 2:4) trains the
  compressed cuSPARSELt layers instead of the simulator — the same function, the real kernels — with
  `slope.optim.ADAMWSparse` (fp32 masters and moments, W_RCᵀ re-derived every step) for their values.
* AdamW on fp32 master weights under bf16/fp16 autocast (fp16 with `slope.optim.DynamicLossScaler`), warm-up
  then linear decay, clipping by one global norm.
* A checkpoint (model, optimizers, schedule, data and RNG state, loss history) is written atomically every
  ``--checkpoint-every`` steps; rerunning the same command resumes from it and reproduces the uninterrupted run.
  ``losses.csv`` (train and validation loss per step) is rewritten with every checkpoint.
* Data parallel under torchrun (`slope.distributed`): ``torchrun --standalone --nproc_per_node 2 -m
  experiments.pretrain ...``. ``--batch-size`` is the *global* batch per optimizer step: one generator draws the
  same global batch on every rank, each rank takes its share and splits it into ``--grad-accumulation``
  micro-batches (gradients synchronised on the last only), so a run is the same computation on any number of
  processes, and a checkpoint written by N processes resumes on M. Rank 0 writes; dropout draws from a stream
  per rank. ``throughput.json`` records the median step time of this process's steps, timed without a per-step
  wait for the GPU (`experiments.steps`).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

import slope
from slope import distributed
from experiments.atomic import atomic_open
from experiments.cli import parse_config
from experiments.data.tokenizer import corpus_token_ids
from experiments.steps import StepLog, to_device


@dataclass(frozen=True)
class PretrainConfig:
    preset: str = "tiny"
    method: str = "dense"
    sparsity: str = "2:4"
    adapter_rank: str = "0"
    adapter_fraction: float = 0.01
    corpus: str = "data/corpus"
    tokenizer: str = "data/corpus/tokenizers/gpt2-bpe"
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    seq_len: int = 128
    batch_size: int = 8  # sequences per optimizer step, over all processes and micro-batches
    grad_accumulation: int = 1  # micro-batches per step on each process
    dropout: float = 0.1  # GPT-2's residual / embedding / attention dropout
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_fraction: float = 0.01
    clip: float = 1.0
    amp: str = "auto"  # auto (bf16 on GPU, none on CPU) | bf16 | fp16 | none
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 50
    stop_after: int = 0  # end this process after so many steps (0 = run to the end); the next run resumes
    seed: int = 0
    compress: bool = False  # SLoPe through the compressed cuSPARSELt layers (CUDA, 2:4, 16-bit autocast)
    out: str = "runs/pretrain"


PRESETS = {
    # tiny: a pipeline check for 2 CPU cores, ~12 s per run (21 runs per table): 4k vocabulary; 160 positions
    # because lm-eval needs the longest continuation of the generated tasks in the context (151 tokens)
    "tiny": replace(PretrainConfig(), tokenizer="data/corpus/tokenizers/gpt2-bpe-4k", seq_len=160, batch_size=4,
                    steps=120, eval_every=40, checkpoint_every=40),
    # small: ~9M parameters, 49M tokens (~3 passes over the corpus), about two minutes per run on one H100; sized
    # so three trained models (fp16 shards, ~19 MB each) fit what a lent GPU machine returns per call
    "small": replace(PretrainConfig(), preset="small", n_layer=6, n_embd=256, n_head=4, seq_len=512, batch_size=32,
                     steps=3000, lr=1e-3, eval_every=250, eval_batches=16, checkpoint_every=500),
    # GPT-2 small as in the paper: 400k steps of 512 x 1024 tokens, AdamW lr 6e-4, wd 0.1, eps 1e-4, 1% warm-up
    "paper": replace(PretrainConfig(), preset="paper", n_layer=12, n_embd=768, n_head=12, seq_len=1024,
                     batch_size=512, steps=400_000, lr=6e-4, eps=1e-4, amp="fp16", eval_every=2000,
                     eval_batches=64, checkpoint_every=2000),
}


def load_tokens(cfg: PretrainConfig, split: str, tokenizer) -> torch.Tensor:
    """The split's token ids (documents joined by <|endoftext|>), cached next to the corpus as int32."""
    return corpus_token_ids(cfg.corpus, split, tokenizer, Path(cfg.tokenizer).name, tokenizer.eos_token_id)


def atomic_save(obj, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def sparsity_schedule(spec: str):
    return slope.split_blocks(*spec.split("-")) if "-" in spec else spec


def build_model(cfg: PretrainConfig, tokenizer, adapters: bool, device: torch.device | None = None,
                compress_dtype: torch.dtype = torch.bfloat16):
    """The seeded model, pruned as ``cfg`` says, on ``device`` (where ``cfg.compress`` builds its layers)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.seq_len, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config)  # initialised on the CPU: the same weights on every machine and rank
    if cfg.compress and (device is None or torch.device(device).type != "cuda"):
        raise ValueError(f"{cfg.out}: a --compress run's layers exist on a CUDA GPU only; build it there "
                         "(pass device=), or load its weights into a simulated model there first")
    if cfg.compress:  # cuSPARSELt compresses on the GPU; masks from the same weights as the simulator's
        slope.prune_model(model.to(device), compress=True, compress_dtype=compress_dtype, sparsity="2:4")
    elif cfg.method != "dense":
        slope.prune_model(model, method=cfg.method, sparsity=sparsity_schedule(cfg.sparsity))
    if adapters:
        slope.add_lora(model, cfg.adapter_rank)
    return model.to(device or "cpu")


def check_compress(cfg: PretrainConfig, device: torch.device, amp: str) -> None:
    """``--compress`` runs cuSPARSELt's 2:4 kernels in 16 bits on a GPU: anything else is refused, by name."""
    if cfg.method != "slope" or cfg.sparsity not in ("2:4", "2:4-2:4"):
        raise SystemExit(f"--compress trains SLoPe 2:4 (cuSPARSELt's pattern), not --method {cfg.method} "
                         f"--sparsity {cfg.sparsity}; drop --compress to simulate other methods and patterns")
    if device.type != "cuda":
        raise SystemExit("--compress needs a CUDA GPU (cuSPARSELt); on this machine drop --compress: the "
                         "simulated layers compute the same function")
    if amp not in ("bf16", "fp16"):
        raise SystemExit(f"--compress computes in 16 bits: use --amp bf16 or fp16 (got {amp})")


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    warmup = max(1, round(cfg.warmup_fraction * cfg.steps))
    return (step + 1) / warmup if step < warmup else max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup))


def adapter_start(cfg: PretrainConfig) -> int | None:
    if cfg.method == "dense" or slope.resolve_rank(cfg.adapter_rank, cfg.n_embd) == 0:
        return None
    return cfg.steps - max(1, math.ceil(cfg.adapter_fraction * cfg.steps))


def batch(tokens: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - cfg.seq_len - 1, (cfg.batch_size,), generator=generator)
    return torch.stack([tokens[s:s + cfg.seq_len] for s in starts.tolist()]).long()


# Config fields that say where a run lives, not what it computes: a checkpoint or shard may differ in these.
PLACEMENT_FIELDS = ("out", "stop_after")


def same_training(saved: dict, cfg) -> bool:
    """Whether a saved config (a checkpoint's or shard's) describes the same training as ``cfg``.

    Fields added to the config after the save compare equal when ``cfg`` keeps their default (what the older
    code did implicitly), so older checkpoints stay usable.
    """
    defaults = {f.name: f.default for f in fields(cfg)}
    current = asdict(cfg)
    return all(saved.get(name, defaults[name]) == current[name] for name in current if name not in PLACEMENT_FIELDS)


def micro_batch_size(cfg: PretrainConfig, world_size: int) -> int:
    """Rows per forward on each process; the global batch must split evenly over processes and micro-batches."""
    parts = world_size * cfg.grad_accumulation
    if cfg.grad_accumulation < 1 or cfg.batch_size % parts:
        raise SystemExit(f"--batch-size {cfg.batch_size} (the global batch) must be a multiple of processes "
                         f"({world_size}) x --grad-accumulation ({cfg.grad_accumulation}); change one of them")
    return cfg.batch_size // parts


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of a non-zero rank's own dropout stream (rank 0 keeps the single-process stream)."""
    return (seed * 1_000_003 + rank * 7919 + step) % 2**63


def rng_state(ctx) -> dict:
    """This process's torch (and CUDA) RNG state, for a checkpoint's per-rank list."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None}


def restore_rng(state: dict, cfg, ctx, step: int) -> None:
    """Each rank's RNG as saved; resumed on another process count, ranks without a saved stream get a fresh one."""
    per_rank = state.get("rank_rng")
    if per_rank is None:  # written by a single process before the data-parallel runner
        per_rank = [{"torch": state["torch_rng"], "cuda": None}]
        if state.get("cuda_rng") is not None and ctx.device.type == "cuda":
            per_rank[0]["cuda"] = state["cuda_rng"][ctx.device.index or 0]
    if ctx.rank < len(per_rank) and (len(per_rank) == ctx.world_size or ctx.rank == 0):
        mine = per_rank[ctx.rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], ctx.device)
    else:
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank, step))
    if ctx.is_main and len(per_rank) != ctx.world_size:
        tqdm.write(f"resuming a {len(per_rank)}-process checkpoint on {ctx.world_size}: the data stream is the "
                   "same; dropout streams of the other ranks start afresh", file=sys.stderr)


def train(cfg: PretrainConfig, ctx: distributed.DistributedContext | None = None) -> list[dict]:
    """Pretrain (or resume) one run; under torchrun every process calls this. Returns the loss history."""
    from experiments.data.tokenizer import load_tokenizer

    if cfg.method not in ("dense", "slope", "srste"):
        raise SystemExit(f"--method {cfg.method!r}: choose dense, slope or srste (Wanda prunes a trained dense model)")
    ctx = ctx or distributed.init_distributed()
    device = ctx.device
    micro = micro_batch_size(cfg, ctx.world_size)
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    if cfg.compress:
        check_compress(cfg, device, amp)
    if not (Path(cfg.tokenizer) / "tokenizer.json").exists():
        raise SystemExit(f"--tokenizer {cfg.tokenizer}: no tokenizer.json there; run `make data` (it trains the "
                         "suite's tokenizers) or point --tokenizer at one")
    tokenizer = load_tokenizer(cfg.tokenizer, "gpt2", cfg.seq_len)
    if ctx.is_main:  # the token cache is written once, by rank 0
        load_tokens(cfg, "train", tokenizer), load_tokens(cfg, "validation", tokenizer)
    distributed.barrier(ctx)
    train_tokens, val_tokens = load_tokens(cfg, "train", tokenizer), load_tokens(cfg, "validation", tokenizer)
    out = Path(cfg.out)
    checkpoint_path = out / "checkpoint.pt"
    state = torch.load(checkpoint_path, weights_only=False, map_location="cpu") if checkpoint_path.exists() else None
    if state is not None and not same_training(state["config"], cfg):
        raise SystemExit(f"{checkpoint_path} was written by another configuration; use a new --out")
    start_adapters = adapter_start(cfg)
    step = state["step"] if state else 0
    # adapters come from the checkpoint, not from its step: one taken at the adapter step itself holds none yet
    # (the loop adds them, with the RNG state the uninterrupted run had there)
    adapters_on = state is not None and "adapters" in state["optimizers"]
    # same seed: the same initial model on every rank
    module = build_model(cfg, tokenizer, adapters_on, device, torch.float16 if amp == "fp16" else torch.bfloat16)
    if ctx.rank:
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
    adapter_ids = {id(p) for p in slope.lora_parameters(module)}
    # compressed layers' values go to ADAMWSparse (fp32 masters at compressed size), everything else to AdamW
    owned = slope.optim.dense_parameters(module) if cfg.compress else module.parameters()
    dense = [p for p in owned if id(p) not in adapter_ids]
    optimizers = {"model": torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)}
    if cfg.compress:
        optimizers["sparse"] = slope.optim.ADAMWSparse(module, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    if adapters_on:
        optimizers["adapters"] = torch.optim.AdamW(slope.lora_parameters(module), lr=cfg.lr, eps=cfg.eps)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # the global data stream, identical on every rank
    scaler = slope.optim.DynamicLossScaler() if amp == "fp16" else None
    history: list[dict] = []
    if state:
        module.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        generator.set_state(state["generator"])
        restore_rng(state, cfg, ctx, step)
        history = state["history"]
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    model = distributed.wrap(module, ctx)
    val_generator = torch.Generator().manual_seed(cfg.seed + 2)
    val_batches = [batch(val_tokens, cfg, val_generator) for _ in range(cfg.eval_batches)]
    autocast = dict(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                    enabled=amp != "none")

    end = cfg.steps if not cfg.stop_after else min(cfg.steps, step + cfg.stop_after)
    progress = tqdm(range(step, end), initial=step, total=cfg.steps, desc=f"{cfg.method}", file=sys.stderr,
                    disable=None if ctx.is_main else True)
    log = StepLog(device)
    for step in progress:
        log.begin()
        if step == start_adapters and "adapters" not in optimizers:
            optimizers["adapters"] = torch.optim.AdamW(slope.add_lora(module, cfg.adapter_rank), lr=cfg.lr,
                                                       eps=cfg.eps)
            model = distributed.wrap(module, ctx)  # DDP's parameter set is fixed: wrap again with the adapters
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
        micro_batches = distributed.rank_rows(batch(train_tokens, cfg, generator), ctx).split(micro)
        step_loss = torch.zeros((), device=device)
        for index, ids in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            # gradients are all-reduced once per step, on the last micro-batch
            with nullcontext() if last or not ctx.distributed else model.no_sync():
                ids = to_device(ids, device)
                with torch.autocast(**autocast):
                    loss = model(input_ids=ids, labels=ids).loss / len(micro_batches)
                (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach()
        if scaler:
            scaler.step(list(optimizers.values()), max_grad_norm=cfg.clip)
        else:  # gradients are averaged over ranks already: this is the global norm
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip)
            for opt in optimizers.values():
                opt.step()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, "train_loss": distributed.all_reduce_mean(step_loss, ctx), "val_loss": "",
               "lr": cfg.lr * lr_factor(step, cfg)}  # the loss stays on the device until log.settle
        log.tick(row)
        history.append(row)
        step += 1
        evaluate_now = step % cfg.eval_every == 0 or step == cfg.steps
        checkpoint = step % cfg.checkpoint_every == 0 or step == end
        if evaluate_now:
            row["val_loss"] = evaluate(module, val_batches, autocast, ctx, micro)
        if evaluate_now or checkpoint or log.due(step):
            progress.set_postfix(loss=log.settle())  # checkpoints hold numbers, not device tensors
        if checkpoint:
            save_checkpoint(out, ctx, cfg, step, module, optimizers, generator, history, scaler)
    log.settle()
    finish_run(out, ctx, module, cfg.batch_size * cfg.seq_len, log.step_seconds)
    return history


def save_checkpoint(out: Path, ctx, cfg, step: int, model, optimizers: dict, generator, history: list[dict],
                    scaler, name: str = "checkpoint.pt") -> None:
    """``out/<name>`` (atomic) and ``out/losses.csv`` from rank 0, with every rank's RNG state.

    Every rank must call it (the RNG states are gathered); ``model`` is the module inside DDP.
    """
    rank_rng = distributed.all_gather_objects(rng_state(ctx), ctx)
    if ctx.is_main:
        atomic_save({"config": asdict(cfg), "step": step, "model": model.state_dict(),
                      "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                      "generator": generator.get_state(), "torch_rng": rank_rng[0]["torch"],
                      "rank_rng": rank_rng, "world_size": ctx.world_size, "history": history,
                      "scaler": scaler.state_dict() if scaler else None}, out / name)
        write_losses(out / "losses.csv", history)
    distributed.barrier(ctx)


def finish_run(out: Path, ctx, model, tokens_per_step: int, step_seconds: list[float]) -> None:
    """End of a (data-parallel) run: replicas must be equal on every rank; rank 0 writes ``throughput.json``."""
    if ctx.distributed:
        mismatched = distributed.replica_mismatches(model, ctx)
        if mismatched:
            raise RuntimeError(f"replicas diverged across ranks in {mismatched[:5]} (of {len(mismatched)}); "
                               "a bug: report it with the command line")
    if ctx.is_main and step_seconds:
        write_throughput(out / "throughput.json", tokens_per_step, ctx, step_seconds)


def write_throughput(path: Path, tokens_per_step: int, ctx, step_seconds: list[float]) -> None:
    """Median step time of this process's steps (the first 5 warm up and are left out when there are more)."""
    timed = step_seconds[5:] if len(step_seconds) > 10 else step_seconds
    median = statistics.median(timed)
    with atomic_open(path) as f:
        json.dump({"world_size": ctx.world_size, "steps_timed": len(timed), "median_step_s": median,
                   "iqr_step_s": _iqr(timed), "tokens_per_step": tokens_per_step,
                   "tokens_per_s": tokens_per_step / median, "device": str(ctx.device)}, f, indent=2)


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


@torch.no_grad()
def evaluate(model, batches, autocast, ctx=None, micro: int | None = None) -> float:
    """Mean validation loss over global ``batches``: each rank scores its rows in micro-batches, then the mean."""
    ctx = ctx or distributed.DistributedContext()
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.autocast(**autocast):
        for rows in batches:
            for ids in distributed.rank_rows(rows, ctx).split(micro or len(rows)):
                ids = to_device(ids, device)
                total += model(input_ids=ids, labels=ids).loss.item()
                count += 1
    model.train()
    if not ctx.distributed:
        return total / count
    return distributed.all_reduce_mean(torch.tensor(total / count, dtype=torch.float64, device=device), ctx).item()


def write_losses(path: Path, history: list[dict]) -> None:
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train_loss", "val_loss", "lr"])
        writer.writeheader()
        writer.writerows(history)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv, default="small" if torch.cuda.is_available() else "tiny")
    ctx = distributed.init_distributed()
    try:
        history = train(cfg, ctx)
    finally:
        distributed.shutdown(ctx)
    last = history[-1] if history else {}
    if ctx.is_main:
        print(f"{cfg.method} ({cfg.preset}): step {last.get('step')} train loss "
              f"{last.get('train_loss', float('nan')):.4f} -> {cfg.out}/losses.csv")
    return history


def config_argv(cfg: PretrainConfig) -> list[str]:
    """Command-line arguments that rebuild ``cfg`` (``--preset`` plus every field), e.g. for a torchrun launch."""
    args = ["--preset", cfg.preset]
    for name, value in asdict(cfg).items():
        if name != "preset":
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def launch(cfg: PretrainConfig, nproc: int) -> list[dict]:
    """Train ``cfg`` on ``nproc`` processes of this node through torchrun (1: in this process); the history."""
    if nproc <= 1:
        return train(cfg)
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "experiments.pretrain", *config_argv(cfg)]
    subprocess.run(command, check=True)
    return torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=False, map_location="cpu")["history"]


if __name__ == "__main__":
    main()
