"""BERT masked-LM pretraining on the offline corpus: dense, SLoPe or Extended SR-STE, lazy adapters, exact resume.

    python -m experiments.bert_pretrain --preset tiny --method slope --sparsity 2:4-2:8 --out runs/bert-tiny-slope

* Model: transformers ``BertForMaskedLM`` (no next-sentence head) from a named preset — ``tiny`` for 2 CPU
  cores, ``small`` for a few minutes on one H100, ``paper`` = BERT-Large with the paper's two phases (a config
  for a cluster, not run here); vocabulary from the corpus WordPiece tokenizer. Data and masking: `experiments.mlm`.
  The MLM head runs on the masked positions only (NVIDIA's "sparse predictions"): the same loss, ~7x less
  head compute, which dominates a small model with a 16k vocabulary.
* Method: ``dense``; ``slope`` (simulated double-pruned N:M; ``--sparsity 2:4`` or ``2:4-2:8`` = first half /
  second half of the blocks); ``srste`` (Extended SR-STE). Lazy adapters of ``--adapter-rank`` (e.g. ``1.56%``
  of the hidden size) for the final ``--adapter-fraction`` of the steps, with their own optimizer.
* Optimizer ``adamw`` or ``lamb`` (`experiments.lamb`) on fp32 master weights under bf16/fp16 autocast (fp16 with
  `slope.optim.DynamicLossScaler`); no weight decay on biases and LayerNorm; warm-up then linear decay per
  phase; clipping by one global norm; ``--grad-accumulation`` micro-batches per step.
* Two phases as in BERT: the last ``--phase2-steps`` use ``--phase2-seq-len`` / ``--phase2-batch-size`` and their
  own warm-up + decay from ``--phase2-lr`` (0 steps = one phase). Validation always uses phase 1's length.
* Checkpoint (model, optimizers, data/mask generator, RNG, loss history) written atomically every
  ``--checkpoint-every`` steps; rerunning the same command resumes to the uninterrupted result, bit for bit.
  ``losses.csv`` (train / validation MLM loss and lr per step) is rewritten with every checkpoint.
* Branches: a sparse run also saves ``branch.pt``, its state at `branch_step` (where adapters of any rank start).
  Runs that differ only in the adapter rank compute the same thing up to there, so `start_from_branch` starts
  one from another's branch instead of repeating ~99% of the pretraining (the BERT tables' rank rows do).
* Data parallel under torchrun, like `experiments.pretrain`: ``torchrun --standalone --nproc_per_node 2 -m
  experiments.bert_pretrain ...`` computes the one-process run (every rank draws the same micro-batches and takes
  its rows; see `train`), and checkpoints move between process counts.
"""
from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import slope
from experiments.cli import parse_config
from experiments.lamb import LAMB
from experiments.mlm import IGNORE_INDEX, load_bert_tokens, mask_tokens, sample_windows
from experiments.pretrain import (atomic_save, finish_run, rank_seed, restore_rng, same_training, save_checkpoint,
                                  sparsity_schedule)
from experiments.steps import StepLog, to_device
from slope import distributed


@dataclass(frozen=True)
class BertPretrainConfig:
    preset: str = "tiny"
    method: str = "dense"  # dense | slope | srste
    sparsity: str = "2:4"  # "N:M", or "N:M-N:M" for the first / second half of the blocks
    adapter_rank: str = "0"  # int or ratio of the hidden size ("1.56%")
    adapter_fraction: float = 0.01
    corpus: str = "data/corpus"
    tokenizer: str = "data/corpus/tokenizers/bert-wordpiece"
    n_layer: int = 2
    hidden: int = 128
    n_head: int = 2
    intermediate: int = 512
    dropout: float = 0.1
    seq_len: int = 64
    batch_size: int = 8
    grad_accumulation: int = 1
    steps: int = 100  # all phases together
    phase2_steps: int = 0
    phase2_seq_len: int = 512
    phase2_batch_size: int = 0  # 0 = batch_size
    phase2_lr: float = 0.0  # 0 = lr
    phase2_warmup_fraction: float = 0.0
    optimizer: str = "adamw"  # adamw | lamb
    lr: float = 1e-3
    weight_decay: float = 0.01
    eps: float = 1e-6
    warmup_fraction: float = 0.06
    clip: float = 1.0
    mask_probability: float = 0.15
    amp: str = "auto"  # auto (bf16 on GPU, none on CPU) | bf16 | fp16 | none
    eval_every: int = 50
    eval_batches: int = 2
    checkpoint_every: int = 50
    stop_after: int = 0  # end this process after so many steps (0 = run to the end); the next run resumes
    seed: int = 0
    out: str = "runs/bert_pretrain"


# tiny: sized for 2 *shared* CPU cores (every table x seed pretrains 5-7 of these): a pipeline check, not a model.
# Hidden 128 keeps the paper's adapter ratios distinct (0.39% / 1.56% / 6.25% of 128 -> ranks 1 / 2 / 8).


PRESETS = {
    "tiny": BertPretrainConfig(),
    "small": replace(BertPretrainConfig(), preset="small", n_layer=6, hidden=512, n_head=8, intermediate=2048,
                     seq_len=128, batch_size=128, steps=3000, lr=5e-4, warmup_fraction=0.02, eval_every=250,
                     eval_batches=16, checkpoint_every=500),
    # BERT-Large as in the paper: LAMB, phase 1 7,038 steps at seq 128 + phase 2 1,563 steps at seq 512. The batch
    # sizes, learning rates and warm-ups are NVIDIA's DeepLearningExamples recipe, whose step counts these are
    # (64k / 32k sequences per step through accumulation; per-device micro-batches 64 and 16 here).
    "paper": replace(BertPretrainConfig(), preset="paper", n_layer=24, hidden=1024, n_head=16, intermediate=4096,
                     seq_len=128, batch_size=64, grad_accumulation=1024, steps=7038 + 1563, phase2_steps=1563,
                     phase2_seq_len=512, phase2_batch_size=16, phase2_lr=4e-3, phase2_warmup_fraction=0.128,
                     optimizer="lamb", lr=6e-3, warmup_fraction=0.2843, amp="fp16", eval_every=500,
                     eval_batches=64, checkpoint_every=200),
}
METHODS = ("dense", "slope", "srste")
BRANCH = "branch.pt"


def canonical_sparsity(spec: str) -> str:
    """``2:4-2:4`` is plain ``2:4``: one spelling per schedule, so equal runs share one cache folder."""
    halves = spec.split("-")
    return halves[0] if len(halves) == 2 and halves[0] == halves[1] else spec


def longest_sequence(cfg: BertPretrainConfig) -> int:
    return max(cfg.seq_len, cfg.phase2_seq_len if cfg.phase2_steps else 0)


def bert_config(cfg: BertPretrainConfig, tokenizer):
    from transformers import BertConfig

    longest = longest_sequence(cfg)
    return BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layer,
                      num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate,
                      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                      max_position_embeddings=longest, pad_token_id=tokenizer.pad_token_id)


def apply_method(model, cfg: BertPretrainConfig, adapters: bool):
    """Make ``model``'s linears sparse as ``cfg`` says (heads stay dense: `slope.paper_filter`); add adapters."""
    if cfg.method != "dense":
        slope.prune_model(model, method=cfg.method, sparsity=sparsity_schedule(cfg.sparsity))
    if adapters:
        slope.add_lora(model, cfg.adapter_rank)
    return model


def build_model(cfg: BertPretrainConfig, tokenizer, adapters: bool):
    from transformers import BertForMaskedLM

    torch.manual_seed(cfg.seed)
    return apply_method(BertForMaskedLM(bert_config(cfg, tokenizer)), cfg, adapters)


def branch_step(cfg: BertPretrainConfig) -> int | None:
    """Where a sparse run's adapters of any rank start: runs differing only in the rank agree up to this step."""
    return None if cfg.method == "dense" else cfg.steps - max(1, math.ceil(cfg.adapter_fraction * cfg.steps))


def adapter_start(cfg: BertPretrainConfig) -> int | None:
    return None if slope.resolve_rank(cfg.adapter_rank, cfg.hidden) == 0 else branch_step(cfg)


def start_from_branch(cfg: BertPretrainConfig, source: str | Path) -> bool:
    """Give ``cfg``'s run the branch state of the run in ``source`` as its checkpoint, when the two differ in the
    adapter rank only (else ValueError); `train` then resumes there, exactly as if it had run the steps itself.

    Returns False, changing nothing, when ``cfg``'s run has a checkpoint of its own or ``source`` has no branch yet.
    """
    target, branch = Path(cfg.out) / "checkpoint.pt", Path(source) / BRANCH
    if target.exists() or not branch.exists():
        return False
    state = torch.load(branch, weights_only=False, map_location="cpu")
    if not same_training({**state["config"], "adapter_rank": cfg.adapter_rank}, cfg):
        raise ValueError(f"{branch} is the branch of a run that differs from {cfg.out} in more than the adapter "
                         "rank; start that run from scratch")
    state["config"] = asdict(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state, target)
    return True


def phase(step: int, cfg: BertPretrainConfig) -> tuple[int, int, int, float, float, int]:
    """(first step, steps, seq_len, batch_size, peak lr, warm-up fraction) of the phase ``step`` is in."""
    first = cfg.steps - cfg.phase2_steps
    if step < first or not cfg.phase2_steps:
        return 0, first, cfg.seq_len, cfg.batch_size, cfg.lr, cfg.warmup_fraction
    return (first, cfg.phase2_steps, cfg.phase2_seq_len, cfg.phase2_batch_size or cfg.batch_size,
            cfg.phase2_lr or cfg.lr, cfg.phase2_warmup_fraction)


def learning_rate(step: int, cfg: BertPretrainConfig) -> float:
    first, steps, _, _, peak, warmup_fraction = phase(step, cfg)
    local, warmup = step - first, max(1, round(warmup_fraction * steps))
    return peak * ((local + 1) / warmup if local < warmup else max(0.0, (steps - local) / max(1, steps - warmup)))


def make_optimizer(params, *, kind: str, lr: float, weight_decay: float, eps: float):
    """AdamW or LAMB over ``params`` ((name, parameter) pairs); biases and LayerNorm get no weight decay."""
    params = list(params)
    no_decay = [p for n, p in params if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in params if not (n.endswith("bias") or "LayerNorm" in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=True)  # one kernel per step: ~15x faster on CPU
    if kind == "lamb":
        return LAMB(groups, lr=lr, eps=eps)
    raise SystemExit(f"--optimizer {kind!r}: choose adamw or lamb")


def mlm_loss(model, inputs: torch.Tensor, labels: torch.Tensor, masked_total: int | None = None) -> torch.Tensor:
    """Masked-LM cross-entropy, the head applied to the masked positions only.

    ``masked_total``: the masked positions of the whole batch when ``inputs`` is one rank's share of it — the sum
    over this share divided by that total, so that the ranks' losses add up to the batch's mean.
    """
    hidden = model.bert(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state
    chosen = labels != IGNORE_INDEX
    logits = model.cls(hidden[chosen])  # (masked tokens, vocab)
    if masked_total is None:
        return F.cross_entropy(logits.float(), labels[chosen])
    return F.cross_entropy(logits.float(), labels[chosen], reduction="sum") / masked_total


class MLMLoss(nn.Module):
    """The MLM loss as a module's forward, so that DDP wraps it (DDP synchronises only through its forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, labels, masked_total=None):
        return mlm_loss(self.model, inputs, labels, masked_total)


class Batches:
    """Masked batches drawn from one token stream with one generator (whose state the checkpoint keeps)."""

    def __init__(self, tokens, tokenizer, cfg: BertPretrainConfig, generator: torch.Generator):
        self.tokens, self.cfg, self.generator = tokens, cfg, generator
        self.ids = dict(cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)
        self.masking = dict(mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                            special_ids=tokenizer.all_special_ids, probability=cfg.mask_probability)

    def __call__(self, seq_len: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        windows = sample_windows(self.tokens, seq_len, batch_size, self.generator, **self.ids)
        return mask_tokens(windows, self.generator, **self.masking)


def load_tokenizer_and_tokens(cfg: BertPretrainConfig):
    from experiments.data.tokenizer import load_tokenizer

    if not (Path(cfg.tokenizer) / "tokenizer.json").exists():
        raise SystemExit(f"--tokenizer {cfg.tokenizer}: no tokenizer.json there; run `make data` first")
    tokenizer = load_tokenizer(cfg.tokenizer, "bert", longest_sequence(cfg))
    name = Path(cfg.tokenizer).name
    return tokenizer, {split: load_bert_tokens(cfg.corpus, split, tokenizer, name) for split in ("train", "validation")}


def train(cfg: BertPretrainConfig, ctx: distributed.DistributedContext | None = None) -> list[dict]:
    """Pretrain (or resume) one run; under torchrun every process calls this (see `experiments.pretrain`).

    Data parallel: every rank draws the same micro-batches (``--batch-size`` rows each, ``--grad-accumulation``
    per step) and computes its share of each one's rows; the loss is the share's sum over the batch's masked
    positions, so the ranks' gradients add up to the one-process gradient (DDP averages, hence the factor N).
    """
    if cfg.method not in METHODS:
        raise SystemExit(f"--method {cfg.method!r}: choose one of {METHODS} (Wanda prunes a trained dense model: "
                         "experiments.finetune --prune wanda)")
    if cfg.phase2_steps >= cfg.steps:
        raise SystemExit(f"--phase2-steps {cfg.phase2_steps} must be < --steps {cfg.steps} (steps counts both phases)")
    ctx = ctx or distributed.init_distributed()
    device = ctx.device
    for size, flag in ((cfg.batch_size, "--batch-size"),
                       (cfg.phase2_batch_size or cfg.batch_size, "--phase2-batch-size")):
        if size % ctx.world_size:
            raise SystemExit(f"{flag} {size} must be a multiple of the {ctx.world_size} processes")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    if ctx.is_main:  # token caches are written once, by rank 0
        load_tokenizer_and_tokens(cfg)
    distributed.barrier(ctx)
    tokenizer, tokens = load_tokenizer_and_tokens(cfg)
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
    model = build_model(cfg, tokenizer, adapters_on).to(device)  # same seed: the same model on every rank
    if ctx.rank:
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))  # its own dropout stream
    adapter_ids = {id(p) for p in slope.lora_parameters(model)}
    hyper = dict(kind=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    optimizers = {"model": make_optimizer(((n, p) for n, p in model.named_parameters() if id(p) not in adapter_ids),
                                          **hyper)}
    if adapters_on:
        optimizers["adapters"] = make_optimizer(_adapter_params(model), **hyper)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # the global data stream, identical on every rank
    scaler = slope.optim.DynamicLossScaler() if amp == "fp16" else None
    history: list[dict] = []
    if state:
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        generator.set_state(state["generator"])
        restore_rng(state, cfg, ctx, step)
        history = state["history"]
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    loss_module = distributed.wrap(MLMLoss(model), ctx)
    train_batches = Batches(tokens["train"], tokenizer, cfg, generator)
    val_draw = Batches(tokens["validation"], tokenizer, cfg, torch.Generator().manual_seed(cfg.seed + 2))
    val_batches = [val_draw(cfg.seq_len, cfg.batch_size) for _ in range(cfg.eval_batches)]
    autocast = dict(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                    enabled=amp != "none")

    end = cfg.steps if not cfg.stop_after else min(cfg.steps, step + cfg.stop_after)
    progress = tqdm(range(step, end), initial=step, total=cfg.steps, desc=f"bert {cfg.method}", file=sys.stderr,
                    disable=None if ctx.is_main else True)
    log = StepLog(device)
    tokens_per_step = 0
    for step in progress:
        log.begin()
        if step == start_adapters and "adapters" not in optimizers:
            slope.add_lora(model, cfg.adapter_rank)
            optimizers["adapters"] = make_optimizer(_adapter_params(model), **hyper)
            loss_module = distributed.wrap(MLMLoss(model), ctx)  # DDP's parameter set is fixed: wrap again
        lr = learning_rate(step, cfg)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        _, _, seq_len, batch_size, _, _ = phase(step, cfg)
        tokens_per_step = seq_len * batch_size * cfg.grad_accumulation
        total = torch.zeros((), device=device)
        for index in range(cfg.grad_accumulation):
            inputs, labels = train_batches(seq_len, batch_size)  # the whole micro-batch, on every rank
            # one process: the batch mean, as before; N processes: this rank's share of the batch's sum
            masked_total = int((labels != IGNORE_INDEX).sum()) / ctx.world_size if ctx.distributed else None
            inputs, labels = (to_device(distributed.rank_rows(t, ctx), device) for t in (inputs, labels))
            last = index == cfg.grad_accumulation - 1
            with nullcontext() if last or not ctx.distributed else loss_module.no_sync():
                with torch.autocast(**autocast):
                    loss = loss_module(inputs, labels, masked_total) / cfg.grad_accumulation
                (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach()
        if scaler:
            scaler.step(list(optimizers.values()), max_grad_norm=cfg.clip)
        else:  # gradients are averaged over ranks already: this is the global norm
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            for opt in optimizers.values():
                opt.step()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        # each rank's share was scaled by N for DDP's averaging: their mean is the batch mean (read back later)
        row = {"step": step + 1, "train_loss": distributed.all_reduce_mean(total, ctx), "val_loss": "", "lr": lr}
        log.tick(row)
        history.append(row)
        step += 1
        evaluate_now = step % cfg.eval_every == 0 or step == cfg.steps
        checkpoint = step % cfg.checkpoint_every == 0 or step == end
        branch = step == branch_step(cfg) and "adapters" not in optimizers  # before this run's adapters, if any
        if evaluate_now:
            row["val_loss"] = evaluate(model, val_batches, autocast, ctx)
        if evaluate_now or checkpoint or branch or log.due(step):
            progress.set_postfix(loss=log.settle())  # checkpoints hold numbers, not device tensors
        if checkpoint:
            save_checkpoint(out, ctx, cfg, step, model, optimizers, generator, history, scaler)
        if branch:
            save_checkpoint(out, ctx, cfg, step, model, optimizers, generator, history, scaler, name=BRANCH)
    log.settle()
    finish_run(out, ctx, model, tokens_per_step, log.step_seconds)
    return history


def _adapter_params(model):
    adapters = {id(p) for p in slope.lora_parameters(model)}
    return ((n, p) for n, p in model.named_parameters() if id(p) in adapters)


@torch.no_grad()
def evaluate(model, batches, autocast, ctx=None) -> float:
    """Mean validation MLM loss over whole batches (each rank scores its rows; shares summed over ranks)."""
    ctx = ctx or distributed.DistributedContext()
    device = next(model.parameters()).device
    model.eval()
    with torch.autocast(**autocast):
        if not ctx.distributed:
            loss = sum(mlm_loss(model, i.to(device), l.to(device)).item() for i, l in batches) / len(batches)
        else:
            # this rank's rows' sum over each whole batch's masked positions: the ranks' shares add up to the mean
            shares = [mlm_loss(model, *(distributed.rank_rows(t, ctx).to(device) for t in (i, l)),
                               int((l != IGNORE_INDEX).sum())) for i, l in batches]
            loss = (distributed.all_reduce_mean(torch.stack(shares).double().mean(), ctx) * ctx.world_size).item()
    model.train()
    return loss


def final_val_loss(history: list[dict]) -> float | str:
    return next((h["val_loss"] for h in reversed(history) if h["val_loss"] != ""), "")


def load_pretrained(run_dir: str | Path, map_location="cpu"):
    """(config, tokenizer, BertForMaskedLM with its sparse layers / adapters, history) of a finished run."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pretrain first (python -m experiments.bert_pretrain --out "
                                f"{run_dir})")
    state = torch.load(path, map_location=map_location, weights_only=False)
    cfg = BertPretrainConfig(**state["config"])
    if state["step"] != cfg.steps:
        raise ValueError(f"{path} is at step {state['step']} of {cfg.steps}: finish the pretraining first "
                         "(rerun its command; it resumes)")
    from experiments.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer, "bert", longest_sequence(cfg))
    model = build_model(cfg, tokenizer, adapters=adapter_start(cfg) is not None)
    model.load_state_dict(state["model"])
    return cfg, tokenizer, model, state["history"]


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv, default="small" if torch.cuda.is_available() else "tiny")
    history = train(cfg)
    last = history[-1] if history else {}
    print(f"bert {cfg.method} ({cfg.preset}): step {last.get('step')} train loss "
          f"{last.get('train_loss', float('nan')):.4f} -> {cfg.out}/losses.csv")
    return history


if __name__ == "__main__":
    main()
