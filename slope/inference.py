"""Compressed 2:4 SLoPe inference: merged adapters, tiling and an optional dense path for few tokens.

`SLoPeInferenceLinear` is the inference form of a SLoPe layer (`prepare_inference(model)`, or
``prune_model(compress=True, add_lora=True, merge_lora=True)``). It computes exactly what the simulator computes
with merged adapters (`SLoPeLinear.merge_adapter`):

    Y = X·W_Rᵀ + b + (X·L_p)·R / r          L_p = L pruned 2:4 along d_in, r = the adapter rank

with one compressed matrix and one fused multiply-add (the paper's merged path):

    S = [ W_R ; L_pᵀ ; 0 ]   (d_out + r_pad, d_in), 2:4 along d_in, r_pad = r rounded up to cuSPARSELt's 32
    [Y₀ | Z] = X·Sᵀ (+ [b ; 0])                  one SpMM per tile, all into one (tokens, d_out + r_pad) buffer
    Y = Y₀ + Z[:, :r]·R / r                      `slope.kernels.fused.addmm` (Triton or torch, by benchmark)

* **Tiling** (``tiling=True``): a tall S (d_out ≥ 2·d_in) is split along its rows into ⌈d_out/d_in⌉ equal,
  (near-)square tiles (LLaMA-3-8B's 14336×4096: four of 3584×4096); the last tile also carries the adapter rows, so no row is dropped (the reference
  code's tiling could drop rows). Each tile is one SpMM writing its column block of the shared output buffer
  (``slope_cslt::spmm_out``). Tiling is an inference-only layout here: the training layer stays untiled.
* **Storage**: the tiles' compressed buffers back to back in ``packed``; ``values`` is a (tiles, rows per tile,
  d_in/2) *view* of W_R's kept values inside it. No W_RCᵀ (no backward here), no dense W unless
  ``dense_fallback_tokens`` asks for one. By default (``separate_mask=True``) the layer also keeps W_R's mask as
  ``mask_nibbles`` (d_out, d_in/4), one byte per group of 4, for the few-token kernel and for `state_dict`: 1/8
  of a dense weight beside the 9/16 of the compressed tiles (11/16 in all). With ``separate_mask="auto"`` (or
  False, which raises where it cannot hold) the mask is cuSPARSELt's metadata in ``packed`` and nothing else,
  wherever that metadata's layout is the one `slope.kernels.nm_pack` knows — checked against the library's own
  compress once per tile shape on this GPU (`SpMM.writes_metadata`: tiles of multiples of 128 rows and columns)
  — and the layer has no adapter rows (with them the last tile has r_pad more rows and is not such a tile): the
  layer then holds 9/16 of a dense weight, the 2:4 storage bound (OPT-13B, 8 blocks: 0.617x dense in all, the
  linears 0.5627x, against 0.727x / 0.6875x with the copy; H200, 9fd773d). The cost is decode speed: the
  few-token kernel reading the metadata (8-byte words, decoded in registers) ran 0.68-1.06x dense F.linear under
  CUDA-graph replay on the OPT-13B / LLaMA-3-8B MLP shapes at 1-32 tokens, the same kernel reading the mask copy
  0.81-1.39x in the same process (bf16, H200, bd12323; results/logs/bench_decode_metadata_words_h200.csv). Hence
  the copy by default; "auto" is for memory-bound serving.
* **Few tokens** (``dense_fallback_tokens=N`` or ``"auto"``): at N tokens or fewer a dense copy of W_R (adapters
  folded in) runs through cuBLAS instead. It costs a dense weight's memory, so it is off by default; ``"auto"``
  measures the crossover against an ``nn.Linear`` for this shape once on this GPU (calls issued back to back,
  host cost included; cached on disk with the cuSPARSELt algorithm choices).
* **Decode** (a few tokens, ``few_token_kernel_tokens``: an int, or ``"auto"`` to time both per shape, the
  setting for serving; default 1 token, `FEW_TOKEN_KERNEL_TOKENS`): at that many tokens or fewer the layer skips
  cuSPARSELt and runs `slope.kernels.sparse_gemv` (form ``few_token_form``) on its own buffers (``values`` and
  the metadata in ``packed``, or ``mask_nibbles``; the adapter rows' values in the last tile and their nibbles),
  which reads 1.125 (1.25 with ``mask_nibbles``) bytes per weight instead of dense's 2 — no extra memory, unlike
  the dense fallback. Adapters merge inside it (``few_token_merge``, `set_few_token_merge`): in the epilogue, one
  launch over the adapter rows writes Z = X·L_p as fp32 split-K partials and the W_R launch adds Z·R/r — no
  torch.addmm and no (tokens, d_out + r) buffer, whose host time at one token was more than the SpMVs' (OPT-13B
  fc1/fc2, ranks 80 and 320, H200 bf16: 25–46 µs of host time per 1-token call against 69–95 µs); or, as before,
  both row blocks into one buffer and addmm, which runs faster on the GPU at one token (1.04–1.11x dense under
  CUDA-graph replay against 0.89–1.11x). The default ``"auto"`` takes that path for calls captured into a CUDA
  graph at one token (`GRAPH_ADDMM_MAX_TOKENS`: there only GPU time is replayed) and the epilogue for the rest.
* **state_dict** holds the training layer's canonical entries (``values`` (d_out, d_in/2), ``mask_nibbles``,
  bias, adapters) whether or not the layer keeps a mask of its own (without one, ``mask_nibbles`` is read back
  from the metadata, `nm_pack.nibbles_from_metadata`): it loads from a trained `CompressedSLoPeLinear`
  checkpoint (whose derived ``w_metadata`` / ``wt_*`` entries are ignored) and round-trips exactly; the packed
  buffers are rebuilt on load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compressed import DIM_ALIGNMENT, CompressedSLoPeLinear, check_compressible
from .kernels import fused, nm_pack
from .kernels.cusparselt import SpMM, cached_choice, metadata_view
from .kernels import sparse_gemv as gemv
from .linear import SLoPeLinear, SparseLinearBase
from .masks import nm_mask

# Tokens up to which the few-token kernel replaces cuSPARSELt by default: 1 (a decode step at batch 1). H100,
# CUDA-graph replay, ``decode`` rows of results/bench_inference_h100.csv (a9ca3cd): at 1 token the kernel (its FMA
# form) ran 1.26-1.48x dense F.linear in bf16 (cuSPARSELt 0.50-0.86x) and 1.25-1.50x in fp16 (cuSPARSELt
# 0.67-1.52x: it won only on fp16 OPT-13B fc2) on the four MLP shapes. From 8 tokens the winner depends on shape
# and dtype (cuSPARSELt: 1.2-1.7x on fp16 wide weights; the kernel's dot form 1.0-1.2x, and cuSPARSELt 0.5-0.9x
# in bf16), so ``"auto"`` measures it per shape (GPU time, cached on disk); the default stays at 1 so that
# building a layer never pays that unasked.
FEW_TOKEN_KERNEL_TOKENS = 1
_DERIVED_KEYS = ("w_metadata", "wt_packed", "wt_nibbles")  # a training layer's entries that the values determine
SEPARATE_MASK = (True, False, "auto")  # see the module docstring's **Storage**
FEW_TOKEN_MERGES = ("auto", "epilogue", "addmm")  # `SLoPeInferenceLinear.set_few_token_merge`
# With few_token_merge="auto", a call captured into a CUDA graph at this many tokens or fewer adds Z·R/r through
# addmm, any other call in the epilogue. Captured, host time is not replayed and only GPU time counts: at one token
# the addmm path ran 1.04-1.11x dense F.linear on OPT-13B fc1/fc2 at ranks 80 and 320, the epilogue 0.89-1.11x
# (below dense but on fc1 at rank 80). Eager, the epilogue's host time wins (25-46 µs per call against 69-95 µs),
# and at 8 tokens it wins under graphs too (0.76-0.87x against 0.72-0.77x). H200 bf16, same process, e44904f and
# 23cd4d6 (the "first-piece" rows of results/logs/bench_decode_merge_h200.csv).
GRAPH_ADDMM_MAX_TOKENS = 1


def tile_rows(d_out: int, d_in: int, adapter_rows: int, tiling: bool) -> list[int]:
    """Rows of S per tile: ⌈d_out/d_in⌉ equal, near-square tiles for a tall W when ``tiling`` (untiled where they
    would not split evenly into multiples of 32), the adapter rows added to the last tile."""
    tiles = -(-d_out // d_in)
    if tiling and d_out >= 2 * d_in and d_out % tiles == 0 and (d_out // tiles) % DIM_ALIGNMENT == 0:
        rows = [d_out // tiles] * tiles
    else:
        rows = [d_out]
    rows[-1] += adapter_rows
    return rows


def _capturing(x: torch.Tensor) -> bool:
    """Whether ``x``'s stream is being captured into a CUDA graph (`GRAPH_ADDMM_MAX_TOKENS`)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


class SLoPeInferenceLinear(SparseLinearBase):
    """Inference-only compressed SLoPe linear (see the module docstring). Build with `from_layer`."""

    has_dense_weight = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, lora_rank: int = 0,
                 tiling: bool = True, dtype=torch.bfloat16, device="cuda", layer_name: str = "",
                 implementation: str = "auto", separate_mask: bool | str = True):
        super().__init__(in_features, out_features, bias, sparsity="2:4", layer_name=layer_name, device=device,
                         dtype=dtype)
        check_compressible(out_features, in_features, dtype, torch.device(device), self.layer_name)
        self.dtype, self.tiling = dtype, tiling
        self.adapter_rows = -lora_rank % DIM_ALIGNMENT + lora_rank  # r rounded up to 32 (zero rows past r)
        self.rows = tile_rows(out_features, in_features, self.adapter_rows, tiling)
        self.ops = [SpMM(rows, in_features, dtype, implementation=implementation) for rows in self.rows]
        empty = [op.compress(torch.zeros(rows, in_features, device=device, dtype=dtype))
                 for op, rows in zip(self.ops, self.rows)]
        self.offsets = [sum(t.numel() for t in empty[:i]) for i in range(len(empty) + 1)]  # tiles' byte offsets
        # the compressed zero matrix, not zero bytes: its metadata is a valid (if arbitrary) 2:4 mask to read back
        self.register_buffer("packed", torch.cat(empty), persistent=False)
        self.mask_in_metadata = self._mask_in_metadata(separate_mask)
        self.register_buffer("mask_nibbles", None if self.mask_in_metadata else torch.zeros(
            out_features, in_features // 4, device=device, dtype=torch.uint8))
        self._staged_nibbles: torch.Tensor | None = None  # a mask to compress at the next rebuild (no own copy)
        # the fused bias of each tile reads its slice of [b ; 0] (rebuilt when the bias Parameter changes)
        self.register_buffer("bias_padded", torch.zeros(out_features + self.adapter_rows, device=device, dtype=dtype),
                             persistent=False)
        self.values = nn.Parameter(self._values_view(), requires_grad=False)
        if lora_rank:
            self.add_adapter(lora_rank)  # overwritten by `from_layer` / load_state_dict
            self.lora_merged = True
        self.dense_fallback_tokens = 0
        self.few_token_kernel_tokens = FEW_TOKEN_KERNEL_TOKENS
        self.few_token_form = "auto"  # slope.kernels.sparse_gemv's kernel form: "auto", "fma" or "dot"
        self.few_token_merge = "auto"  # where the few-token path adds Z·R/r: `set_few_token_merge`
        self.register_buffer("adapter_nibbles", None, persistent=False)  # the adapter rows' mask (few-token kernel)
        self.addmm_impl = "auto"  # slope.kernels.fused: "auto" (by measured size), "triton" or "torch"
        self.register_buffer("dense_weight", None, persistent=False)
        self._built_from: tuple | None = None
        self._refresh_tiles()

    def _mask_in_metadata(self, separate_mask: bool | str) -> bool:
        """Whether W_R's mask lives only in cuSPARSELt's metadata (the module docstring's **Storage**)."""
        if separate_mask not in SEPARATE_MASK or not isinstance(separate_mask, (bool, str)):
            raise ValueError(f"{self.layer_name}: separate_mask must be True, False or 'auto', got {separate_mask!r}")
        if separate_mask is True:
            return False
        why = ("it has adapter rows (the last tile is not a multiple of 128 rows)" if self.adapter_rows else
               None if all(op.writes_metadata() for op in self.ops) else
               f"cuSPARSELt's metadata layout for its tiles {self.rows}×{self.in_features} is not the one "
               "slope.kernels.nm_pack reads on this GPU")
        if why and separate_mask is False:
            raise ValueError(f"{self.layer_name}: separate_mask=False, but the mask cannot be read from the "
                             f"metadata: {why}; use separate_mask='auto' or True")
        return why is None

    def nibbles(self) -> torch.Tensor:
        """W_R's mask as nibbles (d_out, d_in/4): the layer's own copy, or read back from the metadata."""
        if self._staged_nibbles is not None:
            return self._staged_nibbles
        if self.mask_nibbles is not None:
            return self.mask_nibbles
        per_tile = [nm_pack.nibbles_from_metadata(metadata_view(tile, op.m, op.k, self.dtype), op.m, op.k)
                    for op, tile, _, _ in self._tiles]
        return torch.cat(per_tile)[: self.out_features]

    def _set_nibbles(self, nibbles: torch.Tensor) -> None:
        if self.mask_nibbles is not None:
            self.mask_nibbles.copy_(nibbles)
        else:
            self._staged_nibbles = nibbles.to(device=self.packed.device, dtype=torch.uint8).clone()

    def _refresh_tiles(self) -> None:
        # Per-tile views made once, not per call: at a few tokens the forward is host-bound, every µs counts.
        bias = self.bias_padded if self.bias is not None else None
        self._dense_bias = None if bias is None else bias[: self.out_features]
        starts = [sum(self.rows[:i]) for i in range(len(self.rows))]
        self._tiles = [(op, self.packed[self.offsets[i]:self.offsets[i + 1]],
                        None if bias is None else bias[start:start + rows], start)
                       for i, (op, rows, start) in enumerate(zip(self.ops, self.rows, starts))]
        # the adapter rows' kept values: the last rows of the last tile, right after W_R's
        row_bytes = self.in_features // 2 * torch.finfo(self.dtype).bits // 8
        first = self.offsets[-2] + (self.rows[-1] - self.adapter_rows) * row_bytes
        self._adapter_values = self.packed[first:first + self.adapter_rows * row_bytes].view(self.dtype).view(
            self.adapter_rows, self.in_features // 2)
        # checked once here, so the few-token path launches without sparse_gemv's per-call checks
        self._values_geometry = gemv.geometry(self.values, self.in_features)
        self._adapter_geometry = gemv.geometry(self._adapter_values, self.in_features)
        self._gemv_plans = None  # made at the first few-token call (the adapter rows' mask comes with `rebuild`)
        self._merge_right, self._merge_rank = None, 0  # set by `rebuild`, which runs before the first forward

    def _values_view(self) -> torch.Tensor:
        # Every tile but the last has the same size, and W_R's rows of the last tile come first in it: so W_R's
        # kept values are a regular (tiles, rows per tile, d_in/2) strided view of `packed`.
        per_tile = self.rows[0] if len(self.rows) > 1 else self.out_features
        elements = self.packed.view(self.dtype)
        stride = (self.offsets[1] - self.offsets[0]) // elements.element_size()
        return elements.as_strided((len(self.rows), per_tile, self.in_features // 2),
                                   (stride, self.in_features // 2, 1))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.values.data_ptr() != self.packed.data_ptr():  # .to()/.cuda() moved the buffer and the view apart
            self.values.data = self._values_view()
        if self._staged_nibbles is not None:
            self._staged_nibbles = self._staged_nibbles.to(self.packed.device)
        self._refresh_tiles()
        return self

    # ----- building -----------------------------------------------------------------------------------------
    @classmethod
    def from_layer(cls, layer: SparseLinearBase, *, tiling: bool = True, dense_fallback_tokens: int | str = 0,
                   implementation: str = "auto", few_token_kernel_tokens: int | str = FEW_TOKEN_KERNEL_TOKENS,
                   separate_mask: bool | str = True) -> "SLoPeInferenceLinear":
        """From a trained `CompressedSLoPeLinear` or a 2:4 `SLoPeLinear` (fp16/bf16, CUDA); adapters are merged."""
        if not isinstance(layer, (CompressedSLoPeLinear, SLoPeLinear)) or layer.sparsity != "2:4":
            raise TypeError(f"{layer.layer_name}: inference layers are built from 2:4 SLoPe layers, got "
                            f"{type(layer).__name__} ({getattr(layer, 'sparsity', '?')})")
        dtype = layer.dtype if isinstance(layer, CompressedSLoPeLinear) else layer.weight.dtype
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, lora_rank=layer.lora_rank,
                  tiling=tiling, dtype=dtype, device=next(layer.parameters()).device, layer_name=layer.layer_name,
                  implementation=implementation, separate_mask=separate_mask)
        new.origin = layer.origin
        with torch.no_grad():
            if isinstance(layer, CompressedSLoPeLinear):
                values, nibbles = layer.values.detach(), layer.mask_nibbles
            else:
                nibbles = nm_pack.pack_nibbles(layer.mask)
                values = nm_pack.gather_kept(layer.weight.detach().to(dtype), nibbles)
            new._set_nibbles(nibbles)
            new.values.copy_(values.reshape(new.values.shape))
            if layer.bias is not None:
                new.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        new._refresh_tiles()
        with torch.no_grad():
            if layer.lora_left is not None:
                new.lora_left.copy_(layer.lora_left)
                new.lora_right.copy_(layer.lora_right)
        new.rebuild()
        new.set_few_token_kernel(few_token_kernel_tokens)
        new.set_dense_fallback(dense_fallback_tokens)  # after: its crossover is against the layer as it will run
        return new

    @torch.no_grad()
    def rebuild(self) -> None:
        """Write every tile of S (metadata and values) from ``values``, the mask (`nibbles`) and L, in place."""
        values = self.values.detach().reshape(self.out_features, self.in_features // 2).clone()
        nibbles = self.nibbles().clone()  # before the tiles are rewritten: without a copy it is read from them
        if self.lora_left is not None:
            left = self.lora_left.detach().to(self.dtype)
            left_mask = nm_mask(left, 2, 4, dim=0, name=f"{self.layer_name}.lora_left").t()  # (r, d_in)
            pad_mask = torch.zeros(self.adapter_rows - self.lora_rank, self.in_features, dtype=torch.bool,
                                   device=left.device)
            pad_mask[:, 0::4] = pad_mask[:, 1::4] = True  # any valid 2:4 pattern: these rows hold zeros
            extra_nibbles = nm_pack.pack_nibbles(torch.cat([left_mask, pad_mask]))
            extra_values = nm_pack.gather_kept(torch.cat([left.t() * left_mask, pad_mask.to(self.dtype) * 0]),
                                               extra_nibbles)
            nibbles = torch.cat([nibbles, extra_nibbles])
            values = torch.cat([values, extra_values])
            self.adapter_nibbles = extra_nibbles.contiguous()
        else:
            self.adapter_nibbles = None
        start = 0
        for i, (op, rows) in enumerate(zip(self.ops, self.rows)):
            tile_nibbles = nibbles[start:start + rows]
            # compress the mask's indicator, then write the values: a kept weight that is exactly 0 keeps its slot
            indicator = nm_pack.unpack_nibbles(tile_nibbles).to(self.dtype)
            tile = self.packed[self.offsets[i]:self.offsets[i + 1]]
            tile.copy_(op.compress(indicator))
            tile[: rows * self.in_features].view(self.dtype).copy_(values[start:start + rows].reshape(-1))
            start += rows
        if self.bias is not None:
            self.bias_padded[: self.out_features].copy_(self.bias.detach())
        self._staged_nibbles = None  # compressed into the metadata now
        if self.dense_fallback_tokens:
            self._build_dense()
        self._gemv_plans = None  # the adapter rows' mask is a new tensor
        # R in the layer's dtype for the merge, cast once here instead of per call (a view where R already has
        # that dtype; a rebuild follows any change to R: `_fingerprint`)
        self._merge_right = None if self.lora_right is None else self.lora_right.detach().to(self.dtype).contiguous()
        self._merge_rank = self.lora_rank
        self._built_from = self._fingerprint()

    def _fingerprint(self) -> tuple:
        # in-place writes bump a tensor's version: a changed L, R or bias after building triggers a rebuild
        return tuple((t.data_ptr(), t._version) for t in (self.lora_left, self.lora_right, self.bias) if t is not None)

    def _build_dense(self) -> None:
        weight = self.effective_weight()
        if self.lora_left is not None:
            weight = weight + self.adapter_weight().to(weight.dtype)
        self.dense_weight = weight.to(self.dtype)

    def set_dense_fallback(self, tokens: int | str) -> None:
        """Run F.linear on a dense copy of W_R (+ adapters) at ≤ ``tokens`` tokens; ``"auto"`` measures the
        crossover for this shape here; 0 turns it off and frees the dense copy."""
        if tokens == "auto":
            tokens = self._measure_crossover()
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"{self.layer_name}: dense_fallback_tokens must be an int >= 0 or 'auto', got {tokens!r}")
        self.dense_fallback_tokens = tokens
        if tokens:
            self._build_dense()
        else:
            self.dense_weight = None

    def set_few_token_merge(self, where: str) -> None:
        """Where the few-token path adds the merged adapters' Z·R/r: ``"epilogue"`` in the W_R launch, from the
        adapter rows' fp32 partials; ``"addmm"``, as the cuSPARSELt path does, both row blocks into one
        (tokens, d_out + r) buffer and then `slope.kernels.fused.addmm`; ``"auto"`` (the default) the addmm path
        for calls captured into a CUDA graph at ≤ `GRAPH_ADDMM_MAX_TOKENS` tokens, the epilogue for the others (why:
        `GRAPH_ADDMM_MAX_TOKENS`; `performance_experiments.bench_inference --sections decode_merge` compares them)."""
        if where not in FEW_TOKEN_MERGES:
            raise ValueError(f"{self.layer_name}: few_token_merge must be one of {FEW_TOKEN_MERGES}, got {where!r}")
        self.few_token_merge, self._gemv_plans = where, None

    def set_few_token_kernel(self, tokens: int | str) -> None:
        """Run `slope.kernels.sparse_gemv` instead of cuSPARSELt at ≤ ``tokens`` tokens (0: never); ``"auto"``
        times both for this shape on this GPU at 1…64 tokens (GPU time, CUDA-graph replay) and keeps the kernel
        up to where it stops winning."""
        if tokens == "auto":
            tokens = self._measure_few_token_crossover()
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ValueError(f"{self.layer_name}: few_token_kernel_tokens must be an int >= 0 or 'auto', "
                             f"got {tokens!r}")
        self.few_token_kernel_tokens = tokens

    def _choice_key(self, what: str) -> str:
        """Disk-cache key of a measured per-shape choice (`cached_choice`): GPU, shape, dtype, rank, tiles, bias,
        where the few-token kernel reads the mask."""
        return (f"{torch.cuda.get_device_name()}|{self.out_features}x{self.in_features}|{self.dtype}|r{self.lora_rank}"
                f"|tiles{len(self.rows)}|b{int(self.bias is not None)}|mask{'meta' if self.mask_in_metadata else 'copy'}"
                f"|{what}")

    def _measure_few_token_crossover(self) -> int:
        return cached_choice(self._choice_key(f"few_token_kernel_v{gemv.KERNEL_VERSION}_gpu_time"),
                             self._time_few_token_crossover)

    @torch.no_grad()
    def _time_few_token_crossover(self) -> int:
        """Largest of 1, 8, 16, 32, 64 tokens up to which the few-token kernel beat cuSPARSELt at every count
        tried (0 if it lost at 1 token). Timed on the GPU alone (`_graph_ms`): a one-token call is host-bound, so
        back-to-back timing would compare the two paths' launch costs, not their kernels (it picked cuSPARSELt for
        OPT-13B fc2 in bf16, where the kernel replayed 1.6x faster)."""
        fallback, self.dense_fallback_tokens = self.dense_fallback_tokens, 0
        crossover = 0
        try:
            for tokens in (1, 8, 16, 32, 64):
                x = torch.randn(tokens, self.in_features, device=self.packed.device, dtype=self.dtype)
                self.few_token_kernel_tokens = tokens
                kernel = _graph_ms(self, x)
                self.few_token_kernel_tokens = 0
                if kernel >= _graph_ms(self, x):
                    break
                crossover = tokens
        finally:
            self.dense_fallback_tokens = fallback  # the caller (set_few_token_kernel) sets the kernel's threshold
        return crossover

    def _measure_crossover(self) -> int:
        return cached_choice(self._choice_key("dense_crossover"), self._time_crossover)

    @torch.no_grad()
    def _time_crossover(self) -> int:
        """Largest token count (8 … 4096, doubling) at which a dense nn.Linear beat this layer, 0 if none did.

        Timed as a serving loop runs: 20 calls issued back to back between two events, host cost included
        (at a few tokens both sides are host-bound, so per-kernel timing would pick the wrong side).
        """
        self.dense_fallback_tokens = 0
        self._build_dense()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.packed.device,
                          dtype=self.dtype)
        dense.weight.copy_(self.dense_weight)
        if self.bias is not None:
            dense.bias.copy_(self._dense_bias)
        crossover, tokens = 0, 8
        while tokens <= 4096:
            x = torch.randn(tokens, self.in_features, device=self.packed.device, dtype=self.dtype)
            if _pipelined_ms(dense, x) < _pipelined_ms(self, x):
                crossover = tokens
            tokens *= 2
        self.dense_weight = None
        return crossover

    # ----- compute ------------------------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        values = self.values.detach().reshape(self.out_features, self.in_features // 2)
        return nm_pack.scatter_kept(values, self.nibbles())

    def _sparse_forward(self, x2d: torch.Tensor) -> torch.Tensor:
        if len(self._tiles) == 1:
            op, packed, bias, _ = self._tiles[0]
            out = op(packed, x2d, bias)
        else:
            out = torch.empty(x2d.shape[0], self.out_features + self.adapter_rows, device=x2d.device, dtype=self.dtype)
            for op, packed, bias, start in self._tiles:
                op.into(packed, x2d, bias, out, start)
        return self._merge_adapters(out)

    def _make_gemv_plans(self) -> dict:
        # the operands were checked once (`_refresh_tiles`), so the plans launch without per-call checks.
        # "plain": X·W_Rᵀ + b; "merged": the same plus Z·R/r in its epilogue (`sparse_gemv_triton`'s MERGE), Z the
        # adapter rows' fp32 split-K partials from "adapter" (`GemvPlan.partials`): no torch.addmm and no
        # (tokens, d_out + r) buffer, whose host time at one token exceeded the SpMVs' own
        n, tile_rows, tile_stride = self._values_geometry
        masks, layout = (self.packed, "cusparselt") if self.mask_in_metadata else (self.mask_nibbles, "nibbles")
        weight = (self.values, masks, self._dense_bias, n, self.in_features, tile_rows, tile_stride)
        plans = {}
        if self.lora_left is None or self.few_token_merge != "epilogue":
            plans["plain"] = gemv.GemvPlan(*weight, mask_layout=layout)
        if self.lora_left is not None:
            if self.few_token_merge != "addmm":
                plans["merged"] = gemv.GemvPlan(*weight, mask_layout=layout, adapter_right=self._merge_right,
                                                adapter_scale=1.0 / self._merge_rank)
            n, tile_rows, tile_stride = self._adapter_geometry
            plans["adapter"] = gemv.GemvPlan(self._adapter_values, self.adapter_nibbles, None, n, self.in_features,
                                             tile_rows, tile_stride)
        self._gemv_plans = plans
        self._addmm_warmed = set()  # token counts whose addmm path ran eagerly (`_few_token_forward`)
        return plans

    def few_token_launchers(self) -> set[str]:
        """Which launchers the few-token kernel's direct launches used in this layer so far
        (`slope.kernels.sparse_gemv.GemvPlan.launchers`); empty before any ran."""
        return set().union(*(plan.launchers() for plan in (self._gemv_plans or {}).values()))

    def few_token_jit_launches(self) -> int:
        """How many of this layer's few-token kernel calls went through Triton's JIT rather than a direct launch
        (`slope.kernels.sparse_gemv.GemvPlan.jit_launches`): one or two per shape when all is well."""
        return sum(plan.jit_launches for plan in (self._gemv_plans or {}).values())

    def _merges_in_epilogue(self, x2d: torch.Tensor) -> bool:
        if self.few_token_merge != "auto":
            return self.few_token_merge == "epilogue"
        return not (x2d.shape[0] <= GRAPH_ADDMM_MAX_TOKENS and _capturing(x2d))

    def _few_token_forward(self, x2d: torch.Tensor) -> torch.Tensor:
        plans, form = self._gemv_plans or self._make_gemv_plans(), self.few_token_form
        tokens = x2d.shape[0]
        if ("adapter" in plans and self.few_token_merge == "auto" and tokens <= GRAPH_ADDMM_MAX_TOKENS
                and tokens not in self._addmm_warmed and not _capturing(x2d)):
            # a captured call will take the addmm path: run it once now, so that its kernels are tuned and
            # compiled before any capture (autotuning cannot run inside one)
            self._addmm_forward(x2d, plans, form)
            self._addmm_warmed.add(tokens)
        if "adapter" not in plans or self._merges_in_epilogue(x2d):  # one launch into the result
            result = torch.empty(x2d.shape[0], self.out_features, device=x2d.device, dtype=self.dtype)
            if "adapter" not in plans:
                return plans["plain"](x2d, result, form)
            # Y = X·W_Rᵀ + b + Z·R/r, Z from the adapter rows (one launch before)
            return plans["merged"](x2d, result, form, plans["adapter"].partials(x2d, form))
        return self._addmm_forward(x2d, plans, form)

    def _addmm_forward(self, x2d: torch.Tensor, plans: dict, form: str) -> torch.Tensor:
        out = torch.empty(x2d.shape[0], self.out_features + self.adapter_rows, device=x2d.device, dtype=self.dtype)
        plans["plain"](x2d, out[:, : self.out_features], form)
        plans["adapter"](x2d, out[:, self.out_features:], form)
        return self._merge_adapters(out)

    def _merge_adapters(self, out: torch.Tensor) -> torch.Tensor:
        if self._merge_right is None:
            return out
        # Y = Y₀ + Z·R / r, Y₀ and Z two column blocks of `out`; the result is contiguous for the next layer
        return fused.addmm(out[:, : self.out_features], out[:, self.out_features:self.out_features + self._merge_rank],
                           self._merge_right, 1.0 / self._merge_rank, impl=self.addmm_impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.layer_name}: input has {x.shape[-1]} features, the layer expects {self.in_features}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(f"{self.layer_name}: SLoPeInferenceLinear has no backward; run it under torch.no_grad() "
                               "or train with the compress=True training layers (merge_lora=False)")
        if self._built_from != self._fingerprint():
            self.rebuild()
        # Each tensor op below costs host time that an eager decode step pays in full (at a few tokens the GPU
        # waits on the host), so the no-op ones are skipped rather than called: a 2-D input needs no reshape, an
        # input of the layer's dtype no cast (`performance_experiments.profile_host` shows the split).
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if x2d.dtype != self.dtype:
            x2d = x2d.to(self.dtype)
        x2d = x2d.contiguous()
        tokens = x2d.shape[0]
        if tokens <= self.dense_fallback_tokens:
            y = F.linear(x2d, self.dense_weight, self._dense_bias)
        elif tokens <= self.few_token_kernel_tokens:
            y = self._few_token_forward(x2d)
        else:
            pad = -tokens % 8  # cuSPARSELt wants the token count to be a multiple of 8
            if pad:  # the pad rows stay unwritten: output column j of the SpMM reads only input row j, and the
                # pad rows' outputs are dropped (an empty buffer and one copy instead of F.pad's fill and copy)
                padded = x2d.new_empty((tokens + pad, self.in_features))
                padded[:tokens] = x2d
                y = self._sparse_forward(padded)[:tokens]
            else:
                y = self._sparse_forward(x2d)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    # ----- state_dict: the training layer's canonical entries -----------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "values"] = self.values.detach().reshape(self.out_features, -1).clone()
        if self.mask_nibbles is None:  # no copy of its own: the canonical entry is read back from the metadata
            destination[prefix + "mask_nibbles"] = self.nibbles().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key in _DERIVED_KEYS:
            state_dict.pop(prefix + key, None)
        values = state_dict.get(prefix + "values")
        if values is not None and values.dim() == 2:  # canonical (d_out, d_in/2) -> this layer's tiled view
            state_dict[prefix + "values"] = values.reshape(self.values.shape)
        if self.mask_nibbles is None:  # no buffer to load into: staged for the rebuild before the next forward
            nibbles = state_dict.pop(prefix + "mask_nibbles", None)
            if nibbles is None:
                missing_keys.append(prefix + "mask_nibbles")
            elif nibbles.shape != (self.out_features, self.in_features // 4) or nibbles.dtype != torch.uint8:
                error_msgs.append(f"size mismatch for {prefix}mask_nibbles: copying uint8 "
                                  f"{(self.out_features, self.in_features // 4)} from {nibbles.dtype} "
                                  f"{tuple(nibbles.shape)}")
            else:
                self._set_nibbles(nibbles)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._built_from = None  # rebuilt before the next forward

    def extra_repr(self) -> str:
        return super().extra_repr() + f", inference, tiles={self.rows}, dtype={self.dtype}" + (
            ", mask in cuSPARSELt's metadata" if self.mask_in_metadata else ", separate mask") + (
            f", dense_fallback_tokens={self.dense_fallback_tokens}" if self.dense_fallback_tokens else "") + (
            f", few_token_kernel_tokens={self.few_token_kernel_tokens}")


def _pipelined_ms(fn, x: torch.Tensor, calls: int = 20, repeats: int = 5) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats + 1):  # the first round warms up
        start.record()
        for _ in range(calls):
            fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times[1:])[repeats // 2]


def _graph_ms(fn, x: torch.Tensor, calls: int = 20, repeats: int = 5) -> float:
    """GPU time per call of ``fn(x)``: ``calls`` calls captured in one CUDA graph, the replay timed (median)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(x), fn(x)  # warm-up outside the capture: algorithm choice, autotuning, compilation
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn(x)
    return _pipelined_ms(lambda _: graph.replay(), x, calls=1, repeats=repeats) / calls


def prepare_inference(model: nn.Module, *, tiling: bool = True, dense_fallback_tokens: int | str = 0,
                      implementation: str = "auto", few_token_kernel_tokens: int | str = FEW_TOKEN_KERNEL_TOKENS,
                      separate_mask: bool | str = True) -> nn.Module:
    """Replace every compressed (or 2:4 simulated fp16/bf16 CUDA) SLoPe layer by its inference form, in place.

    Adapters are merged (L pruned 2:4, same 1/r scale). The model can no longer be trained afterwards.
    ``separate_mask``: see `SLoPeInferenceLinear` (the default keeps no mask copy where the metadata is readable).
    """
    from .lora import sparse_layers
    from .prune import _set_submodule

    for name, layer in sparse_layers(model).items():
        if isinstance(layer, SLoPeInferenceLinear):
            continue
        _set_submodule(model, name, SLoPeInferenceLinear.from_layer(
            layer, tiling=tiling, dense_fallback_tokens=dense_fallback_tokens, implementation=implementation,
            few_token_kernel_tokens=few_token_kernel_tokens, separate_mask=separate_mask))
    return model
