"""GPT-2 pretraining on the offline corpus: dense, SLoPe or Extended SR-STE, lazy adapters, exact resume.

    python -m experiments.pretrain --preset tiny --method slope --adapter-rank 2.1% --out runs/gpt2-tiny-slope

* Model: transformers GPT-2 built from a named preset (``tiny`` for 2 CPU cores, ``small`` for a few minutes on
  one H100, ``paper`` = GPT-2 small with the paper's hyper-parameters), vocabulary from the corpus tokenizer.
* Method: ``dense``; ``slope`` (simulated double-pruned N:M; ``--sparsity 2:4`` or ``2:4-2:8`` for first half /
  second half of the blocks); ``srste`` (Extended SR-STE). Lazy adapters of ``--adapter-rank`` are added for the
  final ``--adapter-fraction`` of the steps, with their own AdamW.
* AdamW on fp32 master weights under bf16/fp16 autocast (fp16 with `slope.optim.DynamicLossScaler`), warm-up
  then linear decay, clipping by one global norm.
* A checkpoint (model, optimizers, schedule, data and RNG state, loss history) is written atomically every
  ``--checkpoint-every`` steps; rerunning the same command resumes from it and reproduces the uninterrupted run.
  ``losses.csv`` (train and validation loss per step) is rewritten with every checkpoint.
"""
from __future__ import annotations

import csv
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

import slope
from experiments.atomic import atomic_open
from experiments.cli import parse_config


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
    batch_size: int = 8
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
    out: str = "runs/pretrain"


PRESETS = {
    "tiny": PretrainConfig(),
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
    cache = Path(cfg.corpus) / f"{split}.{Path(cfg.tokenizer).name}.tokens.pt"
    if cache.exists():
        return torch.load(cache)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    with open(Path(cfg.corpus) / f"{split}.txt", encoding="utf-8") as f:
        for line in f:
            ids += tokenizer(line.rstrip("\n"), add_special_tokens=False)["input_ids"] + [eos]
    tokens = torch.tensor(ids, dtype=torch.int32)
    _atomic_save(tokens, cache)
    return tokens


def _atomic_save(obj, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def sparsity_schedule(spec: str):
    return slope.split_blocks(*spec.split("-")) if "-" in spec else spec


def build_model(cfg: PretrainConfig, tokenizer, adapters: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.seq_len, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config)
    if cfg.method != "dense":
        slope.prune_model(model, method=cfg.method, sparsity=sparsity_schedule(cfg.sparsity))
    if adapters:
        slope.add_lora(model, cfg.adapter_rank)
    return model


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


def train(cfg: PretrainConfig) -> list[dict]:
    from experiments.data.tokenizer import load_tokenizer

    if cfg.method not in ("dense", "slope", "srste"):
        raise SystemExit(f"--method {cfg.method!r}: choose dense, slope or srste (Wanda prunes a trained dense model)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    tokenizer = load_tokenizer(cfg.tokenizer, "gpt2", cfg.seq_len)
    train_tokens, val_tokens = load_tokens(cfg, "train", tokenizer), load_tokens(cfg, "validation", tokenizer)
    out = Path(cfg.out)
    checkpoint_path = out / "checkpoint.pt"
    state = torch.load(checkpoint_path, weights_only=False) if checkpoint_path.exists() else None
    same = lambda config: {k: v for k, v in config.items() if k != "stop_after"}  # noqa: E731
    if state is not None and same(state["config"]) != same(asdict(cfg)):
        raise SystemExit(f"{checkpoint_path} was written by another configuration; use a new --out")
    start_adapters = adapter_start(cfg)
    step = state["step"] if state else 0
    adapters_on = start_adapters is not None and step >= start_adapters
    model = build_model(cfg, tokenizer, adapters_on).to(device)
    dense = [p for p in model.parameters() if not any(p is q for q in slope.lora_parameters(model))]
    optimizers = {"model": torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)}
    if adapters_on:
        optimizers["adapters"] = torch.optim.AdamW(slope.lora_parameters(model), lr=cfg.lr, eps=cfg.eps)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    scaler = slope.optim.DynamicLossScaler() if amp == "fp16" else None
    history: list[dict] = []
    if state:
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history = state["history"]
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    val_generator = torch.Generator().manual_seed(cfg.seed + 2)
    val_batches = [batch(val_tokens, cfg, val_generator).to(device) for _ in range(cfg.eval_batches)]
    autocast = dict(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                    enabled=amp != "none")

    def save() -> None:
        _atomic_save({"config": asdict(cfg), "step": step, "model": model.state_dict(),
                      "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                      "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                      "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                      "history": history,
                      "scaler": scaler.state_dict() if scaler else None}, checkpoint_path)
        _write_losses(out / "losses.csv", history)

    end = cfg.steps if not cfg.stop_after else min(cfg.steps, step + cfg.stop_after)
    progress = tqdm(range(step, end), initial=step, total=cfg.steps, desc=f"{cfg.method}", file=sys.stderr,
                    disable=None)
    for step in progress:
        if step == start_adapters and "adapters" not in optimizers:
            optimizers["adapters"] = torch.optim.AdamW(slope.add_lora(model, cfg.adapter_rank), lr=cfg.lr, eps=cfg.eps)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
        ids = batch(train_tokens, cfg, generator).to(device)
        with torch.autocast(**autocast):
            loss = model(input_ids=ids, labels=ids).loss
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(list(optimizers.values()), max_grad_norm=cfg.clip)
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            for opt in optimizers.values():
                opt.step()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, "train_loss": loss.item(), "val_loss": "", "lr": cfg.lr * lr_factor(step, cfg)}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["val_loss"] = evaluate(model, val_batches, autocast)
        history.append(row)
        progress.set_postfix(loss=f"{row['train_loss']:.3f}")
        step += 1
        if step % cfg.checkpoint_every == 0 or step == end:
            save()
    return history


@torch.no_grad()
def evaluate(model, batches, autocast) -> float:
    model.eval()
    with torch.autocast(**autocast):
        loss = sum(model(input_ids=ids, labels=ids).loss.item() for ids in batches) / len(batches)
    model.train()
    return loss


def _write_losses(path: Path, history: list[dict]) -> None:
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train_loss", "val_loss", "lr"])
        writer.writeheader()
        writer.writerows(history)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv, default="small" if torch.cuda.is_available() else "tiny")
    history = train(cfg)
    last = history[-1] if history else {}
    print(f"{cfg.method} ({cfg.preset}): step {last.get('step')} train loss {last.get('train_loss', float('nan')):.4f}"
          f" -> {cfg.out}/losses.csv")
    return history


if __name__ == "__main__":
    main()
