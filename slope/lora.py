"""Lazy low-rank adapters: add them to every sparse linear of a model at any step.

SLoPe adds ``y += (x·L)·R / r`` to each sparse layer for the final ~1% of pretraining (R = 0 at that step, so
the loss does not move). Ranks are quoted as an int or as a ratio of the model's hidden size, the way the paper
does ("1.56%" of BERT-Large's 1024 = 16). Give the adapters their own optimizer (state starts empty when they
appear): ``torch.optim.AdamW(lora_parameters(model), ...)``.
"""
from __future__ import annotations

from torch import nn

from .linear import SparseLinearBase


def sparse_layers(model: nn.Module) -> dict[str, SparseLinearBase]:
    """Every sparse linear of the model by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, SparseLinearBase)}


def model_hidden_size(model: nn.Module) -> int | None:
    """The hidden size from a transformers config (hidden_size / n_embd / d_model), if there is one."""
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def resolve_rank(rank: int | float | str, hidden_size: int | None = None) -> int:
    """An adapter rank from an int, a ratio ("1.56%" or 0.0156) of ``hidden_size``; ratios > 0 give rank >= 1."""
    if isinstance(rank, bool):
        raise ValueError(f"lora_rank={rank!r}: give an int, a float ratio or a percentage string like '1.56%'")
    if isinstance(rank, int):
        if rank < 0:
            raise ValueError(f"lora_rank={rank} must be >= 0 (0 means no adapters)")
        return rank
    if isinstance(rank, str):
        text = rank.strip()
        try:
            ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"lora_rank={rank!r} is neither an int nor a percentage like '1.56%'") from None
        if not text.endswith("%") and ratio == int(ratio):
            return resolve_rank(int(ratio), hidden_size)
    elif isinstance(rank, float):
        ratio = rank
    else:
        raise ValueError(f"lora_rank={rank!r}: give an int, a float ratio or a percentage string like '1.56%'")
    if not 0 <= ratio < 1:
        raise ValueError(f"lora_rank={rank!r}: a ratio of the hidden size must be in [0, 1)")
    if hidden_size is None:
        raise ValueError(f"lora_rank={rank!r} is a ratio of the hidden size, which this model does not state "
                         "(no config.hidden_size / n_embd / d_model): pass hidden_size=... or an int rank")
    return 0 if ratio == 0 else max(1, round(ratio * hidden_size))


def add_lora(model: nn.Module, rank: int | float | str, *, hidden_size: int | None = None) -> list[nn.Parameter]:
    """Add adapters of ``rank`` to every sparse linear of ``model`` (after `prune_model`); return their parameters.

    All layers are checked before any is changed, so a bad rank leaves the model as it was.
    """
    layers = sparse_layers(model)
    if not layers:
        raise ValueError("add_lora found no sparse layers: call slope.prune_model(model) first")
    resolved = resolve_rank(rank, hidden_size or model_hidden_size(model))
    for name, layer in layers.items():
        limit = min(layer.in_features, layer.out_features)
        if resolved >= limit:
            raise ValueError(f"{name}: adapter rank {resolved} (from {rank!r}) must be < min(d_in, d_out) = {limit}; "
                             "choose a smaller rank")
        if layer.lora_left is not None:
            raise ValueError(f"{name}: adapters were already added (rank {layer.lora_rank})")
    for layer in layers.values():
        layer.add_adapter(resolved)
    return lora_parameters(model)


def merge_lora(model: nn.Module) -> None:
    """Switch every adapter to the merged inference layout (L pruned N:M along d_in; same 1/r scale)."""
    for layer in sparse_layers(model).values():
        layer.merge_adapter()


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (L and R of every layer), for their own optimizer / parameter group."""
    params = []
    for layer in sparse_layers(model).values():
        if layer.lora_left is not None:
            params += [layer.lora_left, layer.lora_right]
    return params
