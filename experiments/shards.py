"""Move trained model weights between machines in small files: fp16 shards plus the run's history and provenance.

Why: the lent GPU machine returns at most a few 16 MiB files per call and cannot run lm-eval (it lacks lm-eval
and datasets), so `make gpt2-zeroshot` can pretrain there (``--stage train --export DIR``) and score here
(``--stage eval --import-dir DIR``). Floating-point tensors travel as fp16 (11-bit mantissa; the fp32 masters
are rounded once, as an fp16 inference copy would be); bool masks travel as one byte per 8 entries; tied
weights travel once. The first shard also holds ``meta``: the loss history, the config and the provenance of
the pretraining run, so result rows can say where the model was trained.

    export_shards(model, out_dir, name, meta)   -> [name.0.pt, name.1.pt, ...] each ≤ max_bytes
    import_shards(in_dir, name)                 -> (state_dict, meta)
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from experiments.atomic import atomic_open

MAX_SHARD_BYTES = 15 << 20  # under the 16 MiB a file may have on the way back


def _encode(tensor: torch.Tensor) -> dict:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bool:
        flat = tensor.flatten()
        padded = torch.nn.functional.pad(flat.to(torch.uint8), (0, -flat.numel() % 8)).view(-1, 8)
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
        return {"bits": (padded * weights).sum(1, dtype=torch.uint8), "shape": tuple(tensor.shape)}
    if tensor.is_floating_point():
        return {"data": tensor.to(torch.float16), "dtype": str(tensor.dtype)}
    return {"data": tensor}


def _decode(item: dict) -> torch.Tensor:
    if "bits" in item:
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
        bits = (item["bits"].unsqueeze(1) & weights) != 0
        numel = 1
        for size in item["shape"]:
            numel *= size
        return bits.flatten()[:numel].view(item["shape"])
    data = item["data"]
    return data.to(getattr(torch, item["dtype"].replace("torch.", ""))) if "dtype" in item else data


def _nbytes(item: dict) -> int:
    return sum(t.numel() * t.element_size() for t in item.values() if isinstance(t, torch.Tensor))


def export_shards(state_dict: dict, out_dir: str | Path, name: str, meta: dict,
                  max_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write ``state_dict`` as ``name.{i}.pt`` shards of at most ``max_bytes`` each (a larger tensor is an error)."""
    out_dir = Path(out_dir)
    seen: dict[tuple, str] = {}
    shards: list[dict] = [{}]
    sizes = [0]
    for key, tensor in state_dict.items():
        identity = (tensor.data_ptr(), tensor.shape, tensor.stride()) if tensor.numel() else None
        if identity in seen:  # a tied weight: store a reference, not a second copy
            shards[-1][key] = {"same_as": seen[identity]}
            continue
        if identity is not None:
            seen[identity] = key
        item = _encode(tensor)
        size = _nbytes(item)
        if size > max_bytes:
            raise ValueError(f"{key}: {size} bytes does not fit a {max_bytes}-byte shard; raise max_bytes")
        if sizes[-1] + size > max_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][key] = item
        sizes[-1] += size
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, shard in enumerate(shards):
        payload = {"tensors": shard, "meta": meta if index == 0 else None, "count": len(shards)}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path = out_dir / f"{name}.{index}.pt"
        with atomic_open(path, "wb") as f:
            f.write(buffer.getvalue())
        paths.append(path)
    return paths


def shard_name(row: str, seed: int) -> str:
    """A file-name-safe key for a table row and seed ('slope-r0.5%' -> 'slope-r0.5pct-s0')."""
    return f"{row.replace('%', 'pct').replace(':', '_')}-s{seed}"


def import_shards(in_dir: str | Path, name: str) -> tuple[dict, dict]:
    in_dir = Path(in_dir)
    first = torch.load(in_dir / f"{name}.0.pt", weights_only=False)
    payloads = [first] + [torch.load(in_dir / f"{name}.{i}.pt", weights_only=False) for i in range(1, first["count"])]
    state: dict = {}
    references = {}
    for payload in payloads:
        for key, item in payload["tensors"].items():
            if "same_as" in item:
                references[key] = item["same_as"]
            else:
                state[key] = _decode(item)
    for key, target in references.items():
        state[key] = state[target]
    return state, first["meta"]


def has_shards(in_dir: str | Path, name: str) -> bool:
    return (Path(in_dir) / f"{name}.0.pt").exists()
