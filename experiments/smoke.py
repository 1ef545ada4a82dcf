"""`make smoke`: a tiny byte-level GPT-2 trained for a few dozen steps, dense vs SLoPe vs Extended SR-STE.

It exercises the whole library path a real run takes (prune_model on a transformers model, any torch optimizer,
lazy adapters added near the end with their own optimizer) on a small public-domain text shipped with the tests
(Bierce, *The Devil's Dictionary*), and prints a loss table. Bytes are the tokens, so no tokenizer is trained.
Sized for 2 CPU cores (well under 3 minutes); on a GPU the `gpu` preset is picked and runs under bf16 autocast.

    python -m experiments.smoke [--preset cpu|gpu] [--steps 60] [--methods dense,slope]
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

import slope
from experiments.cli import parse_config
from experiments.provenance import REPO_ROOT
from experiments.results_io import write_rows

METHODS = ("dense", "slope", "slope+adapters", "srste")


@dataclass(frozen=True)
class SmokeConfig:
    corpus: str = "tests/data/devils_dictionary.txt"
    methods: tuple[str, ...] = METHODS
    steps: int = 120
    batch_size: int = 8
    seq_len: int = 128
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.1
    # The paper adds adapters for the last 1% of steps; a smoke run of a few dozen steps uses 20% to see them train.
    adapter_fraction: float = 0.2
    adapter_rank: str = "6.25%"
    eval_batches: int = 8
    seed: int = 0
    device: str = "auto"
    output: str = "runs/smoke/smoke.csv"


PRESETS = {"cpu": SmokeConfig(),
           "gpu": replace(SmokeConfig(), steps=200, batch_size=32, seq_len=256, n_layer=4, n_embd=256, eval_batches=16)}
COLUMNS = ("method", "steps", "first_loss", "final_train_loss", "val_loss", "val_bits_per_byte", "adapter_loss_jump",
           "sparse_layers", "seconds_per_step")


def load_bytes(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.frombuffer(bytearray((REPO_ROOT / path).read_bytes()), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    return data[:split], data[split:]


def batch(data: torch.Tensor, cfg: SmokeConfig, generator: torch.Generator, device) -> torch.Tensor:
    starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch_size,), generator=generator)
    return torch.stack([data[s:s + cfg.seq_len] for s in starts.tolist()]).to(device)


def build_model(cfg: SmokeConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=256, n_positions=cfg.seq_len, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=10, eos_token_id=10)
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


def loss_of(model, ids: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=ids, labels=ids).loss


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], autocast: bool) -> float:
    model.eval()
    loss = sum(loss_of(model, ids, autocast).item() for ids in batches) / len(batches)
    model.train()
    return loss


def train(method: str, cfg: SmokeConfig, train_data, val_batches, device) -> dict:
    model = build_model(cfg).to(device)
    if method != "dense":
        slope.prune_model(model, method="srste" if method == "srste" else "slope")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches for every method
    autocast = device.type == "cuda"
    adapter_step = cfg.steps - max(1, round(cfg.adapter_fraction * cfg.steps)) if method.endswith("adapters") else None
    optimizers, losses, jump = [optimizer], [], float("nan")
    start = time.perf_counter()
    for step in tqdm(range(cfg.steps), desc=f"{method:>15}", leave=False, file=sys.stderr, disable=None):
        if step == adapter_step:
            before = evaluate(model, val_batches[:1], autocast)
            adapter_params = slope.add_lora(model, cfg.adapter_rank)
            jump = evaluate(model, val_batches[:1], autocast) - before  # exactly 0: R starts at zero
            optimizers.append(torch.optim.AdamW(adapter_params, lr=cfg.lr, weight_decay=0.0))
        loss = loss_of(model, batch(train_data, cfg, generator, device), autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = (time.perf_counter() - start) / cfg.steps
    val_loss = evaluate(model, val_batches, autocast)
    return {"method": method, "steps": cfg.steps, "first_loss": round(losses[0], 4),
            "final_train_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4), "val_loss": round(val_loss, 4),
            "val_bits_per_byte": round(val_loss / math.log(2), 4), "adapter_loss_jump": jump,
            "sparse_layers": len(slope.sparse_layers(model)), "seconds_per_step": round(seconds, 4)}


def format_table(rows: list[dict]) -> str:
    shown = ("method", "first_loss", "final_train_loss", "val_loss", "val_bits_per_byte", "adapter_loss_jump",
             "sparse_layers", "seconds_per_step")
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row[c]) for c in shown) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(PRESETS, __doc__.splitlines()[0], argv, default="gpu" if torch.cuda.is_available() else "cpu")
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    train_data, val_data = load_bytes(cfg.corpus)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    val_batches = [batch(val_data, cfg, generator, device) for _ in range(cfg.eval_batches)]
    rows = [train(method, cfg, train_data, val_batches, device) for method in cfg.methods]
    print(f"\nSmoke run: byte-level GPT-2 ({cfg.n_layer} blocks, width {cfg.n_embd}), {cfg.steps} steps of "
          f"{cfg.batch_size}x{cfg.seq_len} bytes on {device}\n")
    print(format_table(rows))
    path = write_rows(REPO_ROOT / cfg.output, rows, columns=COLUMNS, config=cfg)
    print(f"\nrows appended to {path}")
    return rows


if __name__ == "__main__":
    main()
