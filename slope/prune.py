"""`prune_model` / `densify_model`: swap a model's linears for sparse ones and back.

Which layers are sparsified is decided by a ``filter_fn(module, name) -> bool`` (torchao's convention). The
default, `paper_filter`, applies the paper's rules:

* the LM head and classification heads stay dense (any name part in `HEAD_NAMES`, e.g. ``lm_head``, ``cls``,
  ``classifier``, ``score``, ``qa_outputs``; BERT's ``pooler`` counts as part of the classification head);
* the first transformer block's attention input projection(s) stay dense (``c_attn``, ``q/k/v_proj``,
  ``query/key/value`` ... in block 0);
* layers whose aspect ratio max(d_in, d_out) / min(d_in, d_out) exceeds 5 stay dense (too narrow to tile).

How sparse each layer is comes from ``sparsity``: an "N:M" string for all layers, or a callable
``(name, block_index, num_blocks) -> "N:M"`` for per-layer schedules; `split_blocks("2:4", "2:8")` gives the
paper's mixed setting (first half of the blocks 2:4, second half 2:8).

Every selected layer is checked before any is replaced, so bad input leaves the model untouched.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .backends import resolve_backend
from .baselines import FSTLinear, SRSTELinear
from .compressed import CompressedSLoPeLinear, check_compressible
from .linear import SLoPeLinear, SparseLinearBase
from .lora import add_lora as _add_lora
from .lora import merge_lora as _merge_lora
from .lora import model_hidden_size, resolve_rank, sparse_layers
from .masks import check_divisible, parse_sparsity

HEAD_NAMES = frozenset({"lm_head", "cls", "classifier", "score", "qa_outputs", "pooler", "embed_out", "head"})
ATTENTION_INPUT_NAMES = frozenset({"c_attn", "q_attn", "q_proj", "k_proj", "v_proj", "qkv_proj", "query", "key",
                                   "value", "Wqkv", "in_proj"})
MAX_ASPECT_RATIO = 5
_BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:h|layer|layers|blocks|block)\.(\d+)(?:\.|$)")

METHODS: dict[str, type[SparseLinearBase]] = {"slope": SLoPeLinear, "srste": SRSTELinear, "fst": FSTLinear}

FilterFn = Callable[[nn.Module, str], bool]
SparsitySchedule = Callable[[str, "int | None", "int | None"], str]


def block_index(name: str) -> int | None:
    """The transformer block a module belongs to, from its qualified name (``transformer.h.3.mlp`` -> 3)."""
    match = _BLOCK_PATTERN.search(name)
    return int(match.group(1)) if match else None


def is_dense_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' GPT-2 ``Conv1D`` (a linear with its weight stored as (d_in, d_out))."""
    return type(module) is nn.Linear or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of a dense linear-like module."""
    d0, d1 = module.weight.shape
    return (d1, d0) if type(module).__name__ == "Conv1D" else (d0, d1)


def paper_filter(module: nn.Module, name: str) -> bool:
    """The paper's choice of sparse layers (see the module docstring). True = sparsify."""
    parts = name.split(".")
    if HEAD_NAMES.intersection(parts):
        return False
    if block_index(name) == 0 and parts[-1] in ATTENTION_INPUT_NAMES:
        return False
    d_out, d_in = linear_shape(module)
    return max(d_out, d_in) <= MAX_ASPECT_RATIO * min(d_out, d_in)


def split_blocks(first_half: str, second_half: str) -> SparsitySchedule:
    """Schedule: blocks [0, B/2) get ``first_half``, the rest ``second_half`` (layers outside blocks: first)."""
    parse_sparsity(first_half, where="split_blocks first_half")
    parse_sparsity(second_half, where="split_blocks second_half")

    def schedule(name: str, block: int | None, num_blocks: int | None) -> str:
        if block is None or num_blocks is None:
            return first_half
        return first_half if block < num_blocks / 2 else second_half

    schedule.description = f"{first_half}-{second_half}"
    return schedule


@dataclass(frozen=True)
class _Target:
    name: str
    module: nn.Module
    n: int
    m: int


def _select_targets(model: nn.Module, filter_fn: FilterFn | None, sparsity) -> list[_Target]:
    filter_fn = filter_fn or paper_filter
    named = [(name, mod) for name, mod in model.named_modules() if is_dense_linear(mod)]
    blocks = [b for b in (block_index(name) for name, _ in named) if b is not None]
    num_blocks = max(blocks) + 1 if blocks else None
    targets = []
    for name, module in named:
        if not filter_fn(module, name):
            continue
        spec = sparsity(name, block_index(name), num_blocks) if callable(sparsity) else sparsity
        n, m = parse_sparsity(spec, where=f"{name}: sparsity")
        check_divisible(linear_shape(module), m, (0, 1), name=name)
        targets.append(_Target(name, module, n, m))
    return targets


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def prune_model(model: nn.Module, compress: bool = False, tiling: bool = True, add_lora: bool = False,
                lora_rank: int | float | str = 0, merge_lora: bool = False, backend: str = "auto", *,
                sparsity: str | SparsitySchedule = "2:4", filter_fn: FilterFn | None = None, method: str = "slope",
                hidden_size: int | None = None, compress_dtype: torch.dtype | None = None,
                **layer_kwargs) -> nn.Module:
    """Replace the model's linears (``nn.Linear``, GPT-2 ``Conv1D``) with sparse ones, in place; return the model.

    ``compress=False`` (default) is the exact simulator (backend ``"dense"``). ``compress=True`` stores W and
    W_RCᵀ 2:4-compressed on the GPU (backend ``"cusparselt"``; train with `slope.optim.ADAMWSparse`); its
    storage dtype is the weights' (fp16/bf16) or ``compress_dtype`` (e.g. bf16 for an fp32 model under AMP, whose
    other parameters stay fp32). ``merge_lora=True`` with ``compress=True`` gives inference-only layers
    (`slope.inference.SLoPeInferenceLinear`: adapters merged into the compressed matrix, square tiles when
    ``tiling``; load a trained checkpoint into them with ``load_state_dict``); the training layers are untiled and
    the simulator ignores ``tiling``. ``method`` picks the layer: ``"slope"`` (default), ``"srste"`` (Extended SR-STE) or
    ``"fst"``. ``layer_kwargs`` go to the layer (``double_prune=False`` for SLoPe, ``decay=`` for the baselines).
    Prune before building optimizers for Conv1D models: their weights become new (transposed) Parameters.
    """
    if merge_lora and not add_lora:
        raise ValueError("merge_lora=True merges adapters into the sparse weights, but add_lora=False: "
                         "pass add_lora=True with lora_rank > 0, or merge_lora=False")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {tuple(METHODS)}")
    first = next(model.parameters(), None)
    concrete = resolve_backend(backend, compress=compress, device=None if first is None else first.device)
    if compress and method != "slope":
        raise ValueError(f"compress=True supports method='slope' only (got {method!r}); baselines are simulated")
    if not isinstance(sparsity, str) and not callable(sparsity):
        parse_sparsity(sparsity)  # tuples are fine; anything else gets parse_sparsity's error
    rank = resolve_rank(lora_rank, hidden_size or model_hidden_size(model)) if add_lora else 0
    if merge_lora and rank == 0:
        raise ValueError("merge_lora=True needs adapters, but lora_rank resolves to 0: pass lora_rank > 0")
    targets = _select_targets(model, filter_fn, sparsity)
    for target in targets:
        if rank >= min(linear_shape(target.module)):
            raise ValueError(f"{target.name}: adapter rank {rank} must be < min(d_in, d_out) = "
                             f"{min(linear_shape(target.module))}; choose a smaller lora_rank")
    if concrete == "cusparselt":
        for target in targets:
            if (target.n, target.m) != (2, 4):
                raise ValueError(f"{target.name}: compress=True needs 2:4 (sparse tensor cores), got "
                                 f"{target.n}:{target.m}; use compress=False for other N:M")
            d_out, d_in = linear_shape(target.module)
            check_compressible(d_out, d_in, compress_dtype or target.module.weight.dtype,
                               target.module.weight.device, target.name)
        layer_cls, layer_kwargs = CompressedSLoPeLinear, {**layer_kwargs, "dtype": compress_dtype}
    else:
        layer_cls = METHODS[method]
    for target in targets:
        new = layer_cls.from_dense(target.module, sparsity=(target.n, target.m), layer_name=target.name, **layer_kwargs)
        _set_submodule(model, target.name, new)
    if rank:
        _add_lora(model, rank)
    if merge_lora and concrete == "cusparselt":
        # the inference layout: [W_R ; L pruned 2:4] in one compressed matrix (tiled when `tiling`), fused addmm
        from .inference import prepare_inference

        prepare_inference(model, tiling=tiling)
    elif merge_lora:
        _merge_lora(model)
    return model


@torch.no_grad()
def densify_model(model: nn.Module) -> nn.Module:
    """Inverse of `prune_model`: plain ``nn.Linear`` / ``Conv1D`` computing the same function, adapters folded in."""
    for name, layer in sparse_layers(model).items():
        weight = layer.effective_weight().detach()  # (d_out, d_in)
        adapter = layer.adapter_weight()
        if adapter is not None:
            weight = weight + adapter.to(weight.dtype)
        if layer.origin == "conv1d":
            from transformers.pytorch_utils import Conv1D

            dense = Conv1D(layer.out_features, layer.in_features).to(device=weight.device, dtype=weight.dtype)
            dense.weight.copy_(weight.t())
        else:
            dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                              device=weight.device, dtype=weight.dtype)
            dense.weight.copy_(weight)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
        elif layer.origin == "conv1d":
            dense.bias.zero_()
        _set_submodule(model, name, dense)
    return model
