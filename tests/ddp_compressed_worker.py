"""Worker for tests/test_distributed_gpu.py (not a test): compressed SLoPe layers trained under DDP.

    torchrun --standalone --nproc_per_node N -m tests.ddp_compressed_worker OUT.json

Every process builds the same 3-layer bf16 MLP with cuSPARSELt-compressed SLoPe layers, wraps it in DDP
(`slope.distributed`), takes its share of one global batch per step and trains 6 steps with ADAMWSparse for the
kept weights and AdamW for the rest; rank 0 writes the loss per step, the first step's `values.grad` per layer and
the final state (as lists) to OUT.json. Run with N = 1 and N = 2 and compare.
"""
import json
import sys

import torch
from torch import nn

import slope
from slope import distributed
from slope.optim import ADAMWSparse, dense_parameters

GLOBAL_BATCH, WIDTH, STEPS, LR = 64, 256, 6, 1e-2


def main(out: str) -> None:
    ctx = distributed.init_distributed("cuda")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH), nn.GELU(),
                           nn.Linear(WIDTH, 8)).to(ctx.device, torch.bfloat16)
    slope.prune_model(module, compress=True, backend="cusparselt", filter_fn=lambda m, name: name != "4")
    model = distributed.wrap(module, ctx)
    sparse = ADAMWSparse(module, lr=LR, weight_decay=0.1)
    dense = torch.optim.AdamW(dense_parameters(module), lr=LR)
    data = torch.Generator().manual_seed(1)
    losses, first_grads = [], {}
    for step in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, WIDTH, generator=data).to(ctx.device, torch.bfloat16)
        y = torch.randint(0, 8, (GLOBAL_BATCH,), generator=data).to(ctx.device)
        x, y = distributed.rank_rows(x, ctx), distributed.rank_rows(y, ctx)
        loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        if step == 0:
            first_grads = {name: layer.values.grad.float().cpu().tolist()
                           for name, layer in slope.sparse_layers(module).items()}
        sparse.step()
        dense.step()
        sparse.zero_grad(set_to_none=True)
        dense.zero_grad(set_to_none=True)
        losses.append(distributed.all_reduce_mean(loss.detach(), ctx).item())
    mismatched = distributed.replica_mismatches(module, ctx)
    if ctx.is_main:
        state = {k: v.float().cpu().tolist() for k, v in module.state_dict().items() if v.is_floating_point()}
        # the forward mask is fixed at pruning: bit-identical expected. W_RCᵀ (wt_*) derives from fp32 masters that
        # differ by rounding between 1 and 2 processes, so near-ties may pick other entries: not compared.
        masks = {k: distributed.tensor_digest(v) for k, v in module.state_dict().items()
                 if k.endswith(("mask_nibbles", "w_metadata")) and not k.endswith("wt_nibbles")}
        with open(out, "w") as f:
            json.dump({"world_size": ctx.world_size, "losses": losses, "first_grads": first_grads, "state": state,
                       "masks": masks, "replica_mismatches": mismatched}, f)
    distributed.shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
