"""Data-parallel SLoPe training: process group from torchrun's environment, DDP around SLoPe models, rank helpers.

    ctx = slope.distributed.init_distributed()          # world_size 1 without torchrun: everything is a no-op
    model = slope.distributed.wrap(model.to(ctx.device), ctx)
    ...
    loss_for_log = slope.distributed.all_reduce_mean(loss.detach(), ctx)

Design (why it is this small):

* One process per GPU, launched by torchrun (``--standalone`` on one node, its rendezvous flags across nodes).
  NCCL on CUDA, gloo on CPU (tests and CI run two CPU processes). Without torchrun's environment a script runs
  as before: `DistributedContext.world_size` is 1 and every helper here returns its input.
* Every trainable tensor of a SLoPe model is an ``nn.Parameter`` — the simulated layers' dense ``weight``, the
  compressed layers' ``values`` (the kept weights, whose gradient is already at compressed size), biases and
  adapters — so DDP's bucketed all-reduce *averages* all of them, overlapped with the backward. Nothing is
  reduced by hand: the public reference code all-reduced the sparse gradients itself and summed them without
  dividing by the world size (a learning rate silently ``world_size`` times larger for the sparse weights only).
* Masks are not re-broadcast every step: the forward mask is fixed at pruning time and every rank prunes the same
  weights (same seed) the same way; the W_RC / transposed masks are re-derived each step from weights that the
  averaged gradients keep identical on every rank. torch ≥ 2.13 (``forward_sync_buffers=False``) still
  broadcasts rank 0's buffers once when it wraps the model; older torch (``broadcast_buffers=False``) skips
  buffers in that first sync too, so there the masks agree by construction only.
  `replica_digests` lets a run check that at the end (the multi-GPU checks compare every mask).
* Gradient clipping needs no extra communication: when backward returns, DDP has averaged every gradient, so
  ``clip_grad_norm_`` over the local parameters is the global norm over dense and sparse gradients alike.
* Lazy adapters appear mid-run; DDP fixes its parameter set and buckets at construction, so `wrap` is called
  again around the same module after `slope.add_lora` (the new adapter weights are broadcast from rank 0).
* The compressed (cuSPARSELt) layers keep one cuSPARSELt handle per process and their plans per device: with one
  process per GPU and the device set before first use (done here), nothing is shared between GPUs.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "" = not distributed

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, result files and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    ``device``: "cuda" or "cpu"; default CUDA when present. CUDA ranks get ``cuda:LOCAL_RANK`` (set as the
    current device before anything touches CUDA) and NCCL; CPU ranks get gloo.
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=torch.device(kind if kind == "cpu" else "cuda"))
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} unset: launch with torchrun "
                           "(e.g. `torchrun --standalone --nproc_per_node 2 -m experiments.pretrain ...`)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank}: LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                               "GPU(s); set --nproc_per_node to at most the GPU count")
        torch.cuda.set_device(local_rank)
        where, backend = torch.device("cuda", local_rank), "nccl"
    else:
        where, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=where if kind == "cuda" else None)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=where, backend=backend)


def wrap(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DDP around ``model`` (already on ``ctx.device``); the model itself when not distributed.

    Call again (on `unwrap`'s result) after adding parameters, e.g. lazy adapters.
    """
    module = unwrap(model)
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # torch 2.13 renamed (and deprecated) the per-forward buffer broadcast; the old name also skips buffers at wrap
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   **no_buffer_sync)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (state_dicts are saved from it: no "module." prefix, any world size)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of ``value`` over ranks (a new tensor; ``value`` itself is untouched)."""
    if not ctx.distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / ctx.world_size


def all_gather_objects(obj, ctx: DistributedContext) -> list:
    """``obj`` from every rank, in rank order (picklable objects: RNG states, digests)."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistributedContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_rows(batch: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """This rank's contiguous share of a global batch's rows (the row count must divide by the world size)."""
    if not ctx.distributed:
        return batch
    if batch.shape[0] % ctx.world_size:
        raise ValueError(f"a batch of {batch.shape[0]} rows does not split over {ctx.world_size} ranks; "
                         "choose a batch size divisible by the number of processes")
    share = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * share:(ctx.rank + 1) * share]


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (bit-exact equality across processes, any dtype incl. bool and bf16)."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def replica_digests(model: nn.Module) -> dict[str, str]:
    """sha256 per parameter and buffer of this process's replica (compare across ranks with `all_gather_objects`)."""
    module = unwrap(model)
    return {name: tensor_digest(t) for name, t in [*module.named_parameters(), *module.named_buffers()]}


def replica_mismatches(model: nn.Module, ctx: DistributedContext) -> list[str]:
    """Names of the parameters / buffers (masks included) that differ between ranks; empty = replicas equal."""
    digests = all_gather_objects(replica_digests(model), ctx)
    return sorted(name for name in digests[0] if any(d.get(name) != digests[0][name] for d in digests[1:]))
