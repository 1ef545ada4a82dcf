"""Compressed 2:4 SLoPe linear for NVIDIA sparse tensor cores (``prune_model(compress=True)``).

Same semantics as `slope.linear.SLoPeLinear` (the simulator, which the GPU tests use as the oracle), different
storage — no dense copy of W and no byte-per-weight mask:

    w_packed      uint8      cuSPARSELt-compressed W_R: [values (d_out, d_in/2) | metadata]     FWD:   Y  = X·W_Rᵀ
    values        Parameter  a *view* of w_packed's values; its .grad receives BWD-1's kept entries
    mask_nibbles  uint8      (d_out, d_in/4): the fixed forward mask, 4 bits per group of 4
    wt_packed     uint8      compressed W_RCᵀ (d_in, d_out), 2:4 along d_out                     BWD-2: dX = dY·W_RC
    wt_nibbles    uint8      (d_in, d_out/4): W_RCᵀ's mask (metadata and values slots between mask changes)
                                                                                                BWD-1: dW = (dYᵀX)⊙M,
    a dense cuBLAS GEMM whose kept entries are gathered (Triton) into the (d_out, d_in/2) values layout.

`slope.optim.ADAMWSparse` owns the fp32 master values and Adam moments: it writes new 16-bit values into
w_packed in place (metadata unchanged: the forward mask is fixed) and rebuilds wt_packed from the new W_R.
Everything computes in the layer's storage dtype (fp16 or bf16); inputs are cast to it.
"""
from __future__ import annotations

import torch
from torch import nn

from .backends import require_sparse_tensor_cores
from .kernels import nm_pack
from .kernels.cusparselt import SpMM, metadata_view, values_view
from .linear import SLoPeLinear, SparseLinearBase
from .masks import row_mask

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# cuSPARSELt needs both dimensions of a 16-bit structured matrix to be multiples of 32 (and ≥ 32).
DIM_ALIGNMENT = 32


class CompressedSLoPeMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, layer):
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x)
        return layer.forward_op(layer.w_packed, x, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        grad_out = grad_out.contiguous()
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = layer.backward_op(layer.wt_packed, grad_out)  # BWD-2 on W_RCᵀ
        if ctx.needs_input_grad[1]:
            grad_values = nm_pack.gather_kept(grad_out.t() @ x, layer.mask_nibbles)  # BWD-1, kept entries only
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_values, grad_bias, None


class CompressedSLoPeLinear(SparseLinearBase):
    """SLoPe linear with W and W_RCᵀ stored 2:4-compressed for cuSPARSELt. Build with `from_dense`."""

    has_dense_weight = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=torch.bfloat16,
                 device="cuda", layer_name: str = "", implementation: str = "auto"):
        super().__init__(in_features, out_features, bias, sparsity="2:4", layer_name=layer_name,
                         device=device, dtype=dtype)
        check_compressible(out_features, in_features, dtype, torch.device(device), self.layer_name)
        self.dtype = dtype
        self.forward_op = SpMM(out_features, in_features, dtype, implementation=implementation)
        self.backward_op = SpMM(in_features, out_features, dtype, implementation=implementation,
                                layout=self.forward_op.layout)
        dense = torch.zeros(out_features, in_features, device=device, dtype=dtype)
        # Not saved as is: `values` views the same bytes as another dtype, which torch.save refuses; the state
        # dict holds `values` and a copy of the metadata bytes instead (see _save_to_state_dict).
        self.register_buffer("w_packed", self.forward_op.compress(dense), persistent=False)
        self.register_buffer("wt_packed", self.backward_op.compress(dense.t().contiguous()))
        self.register_buffer("mask_nibbles", torch.zeros(out_features, in_features // 4, device=device,
                                                         dtype=torch.uint8))
        self.register_buffer("wt_nibbles", torch.zeros(in_features, out_features // 4, device=device,
                                                       dtype=torch.uint8))
        self.values = nn.Parameter(values_view(self.w_packed, out_features, in_features, dtype))

    def _apply(self, fn, recurse=True):
        # .to()/.cuda() move parameters and buffers separately; `values` must stay a view of `w_packed`.
        super()._apply(fn, recurse)
        if self.values.dtype != self.dtype:
            raise TypeError(f"{self.layer_name}: compressed layers keep their dtype ({self.dtype}); convert the "
                            "model's dtype before prune_model(compress=True)")
        if self.values.data_ptr() != self.w_packed.data_ptr():
            self.values.data = values_view(self.w_packed, self.out_features, self.in_features, self.dtype)
        return self

    def _values_nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "values"] = self.values.detach().clone()  # its own storage, not w_packed's
        destination[prefix + "w_metadata"] = self.w_packed[self._values_nbytes():].detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        metadata = state_dict.pop(prefix + "w_metadata", None)  # load_state_dict passes a copy: safe to pop
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if metadata is None:
            missing_keys.append(prefix + "w_metadata")
        elif metadata.shape != self.w_packed[self._values_nbytes():].shape:
            error_msgs.append(f"{prefix}w_metadata: {tuple(metadata.shape)} bytes saved, "
                              f"{self.w_packed.numel() - self._values_nbytes()} expected")
        else:
            with torch.no_grad():
                self.w_packed[self._values_nbytes():].copy_(metadata)

    # ----- building -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def load_dense(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Set W from a dense (d_out, d_in) weight: forward mask from |W| (or ``mask``), W_RCᵀ from W_R."""
        weight = weight.to(self.w_packed.device)
        mask = row_mask(weight, 2, 4, name=self.layer_name) if mask is None else mask.to(weight.device)
        nibbles = nm_pack.pack_nibbles(mask)
        # Compress an indicator of the mask, not W itself: a kept weight that is exactly 0 must still own its
        # slot, so the metadata always encodes this mask and `values` can be written in place later.
        self.w_packed.copy_(self.forward_op.compress(mask.to(self.dtype)))
        self.mask_nibbles.copy_(nibbles)
        master = nm_pack.gather_kept(weight.float(), nibbles)  # (d_out, d_in/2) fp32
        self.values.copy_(master)
        self.rebuild_transpose(master, recompute_mask=True)

    @torch.no_grad()
    def rebuild_transpose(self, master_values: torch.Tensor, recompute_mask: bool = True) -> None:
        """Update compressed W_RCᵀ from W_R's (fp32) kept values; re-derive its mask when ``recompute_mask``.

        A new mask needs new metadata. Where `SpMM.writes_metadata` allows, one pass derives the mask and writes
        the values, and a second writes the metadata from the mask's nibbles; elsewhere the mask's 0/1 indicator
        is compressed by cuSPARSELt (as for W) and the values written after. An unchanged mask keeps its
        metadata: only the values are rewritten in place, in one pass.
        """
        wt_values = values_view(self.wt_packed, self.in_features, self.out_features, self.dtype)
        if recompute_mask and self.backward_op.writes_metadata():
            nm_pack.transpose_mask_values(master_values, self.mask_nibbles, self.wt_nibbles, wt_values)
            nm_pack.write_metadata(self.wt_nibbles, metadata_view(self.wt_packed, self.in_features,
                                                                  self.out_features, self.dtype))
            return
        if recompute_mask:
            indicator = nm_pack.transpose_mask(master_values, self.mask_nibbles, self.wt_nibbles, self.dtype)
            self.wt_packed.copy_(self.backward_op.compress(indicator))
        nm_pack.transpose_values(master_values, self.mask_nibbles, self.wt_nibbles, wt_values)

    @classmethod
    def from_dense(cls, module: nn.Module, *, sparsity="2:4", layer_name: str = "", mask=None, dtype=None,
                   implementation: str = "auto"):
        """From ``nn.Linear`` / GPT-2 ``Conv1D``; storage dtype ``dtype`` (default: the weight's).

        The bias Parameter is kept as it is (an fp32 bias of an AMP model stays fp32 for its optimizer).
        """
        if (sparsity if isinstance(sparsity, str) else "%d:%d" % tuple(sparsity)) != "2:4":
            raise ValueError(f"{layer_name}: compressed layers are 2:4 only, got {sparsity}")
        is_conv1d = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
        weight = module.weight.detach().t() if is_conv1d else module.weight.detach()
        d_out, d_in = weight.shape
        layer = cls(d_in, d_out, False, dtype=dtype or weight.dtype, device=weight.device,
                    layer_name=layer_name, implementation=implementation)
        layer.origin = "conv1d" if is_conv1d else "linear"
        layer.load_dense(weight, mask)
        layer.bias = module.bias
        return layer

    @classmethod
    def from_simulated(cls, layer: SLoPeLinear, implementation: str = "auto") -> "CompressedSLoPeLinear":
        """Convert a simulated layer (same function); its dtype must be fp16/bf16 on a CUDA device."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype,
                  device=layer.weight.device, layer_name=layer.layer_name, implementation=implementation)
        new.origin = layer.origin
        new.load_dense(layer.weight.detach(), layer.mask)
        with torch.no_grad():
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        _copy_adapters(layer, new)
        return new

    def to_simulated(self) -> SLoPeLinear:
        """The equivalent simulated layer (dense weight + bool mask), e.g. for inspection or CPU use."""
        layer = SLoPeLinear(self.in_features, self.out_features, self.bias is not None, sparsity="2:4",
                            layer_name=self.layer_name, device=self.values.device, dtype=self.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.effective_weight())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        layer.set_mask(nm_pack.unpack_nibbles(self.mask_nibbles))
        layer.origin = self.origin
        _copy_adapters(self, layer)
        return layer

    # ----- compute ------------------------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        return nm_pack.scatter_kept(self.values.detach(), self.mask_nibbles)

    def _sparse_linear(self, x2d: torch.Tensor) -> torch.Tensor:
        x2d = x2d.to(self.dtype).contiguous()
        tokens = x2d.shape[0]
        pad = -tokens % 8  # cuSPARSELt wants the token count to be a multiple of 8
        if pad:
            x2d = torch.nn.functional.pad(x2d, (0, 0, 0, pad))
        # A bias of the storage dtype is fused into the SpMM (its pointer is stable, so the cached plan is reused);
        # an fp32 master bias (AMP) is cast and added outside.
        fused = self.bias if self.bias is not None and self.bias.dtype == self.dtype else None
        y = CompressedSLoPeMatmul.apply(x2d, self.values, fused, self)
        if self.bias is not None and fused is None:
            y = y + self.bias.to(self.dtype)
        return y[:tokens] if pad else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", compressed={self.forward_op.implementation}, dtype={self.dtype}"


def _copy_adapters(src: SparseLinearBase, dst: SparseLinearBase) -> None:
    if src.lora_left is not None:
        dst.add_adapter(src.lora_rank)
        with torch.no_grad():
            dst.lora_left.copy_(src.lora_left)
            dst.lora_right.copy_(src.lora_right)
        dst.lora_merged = src.lora_merged


def check_compressible(d_out: int, d_in: int, dtype: torch.dtype, device: torch.device, name: str) -> None:
    """Clear errors for what the compressed backend cannot take (instead of a crash inside a kernel)."""
    require_sparse_tensor_cores(device, name)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: compress=True needs float16 or bfloat16 weights (got {dtype}); pass "
                         "compress_dtype=torch.bfloat16 (the rest of an fp32 model stays fp32 for AMP) or convert with "
                         "model.to(torch.bfloat16); ADAMWSparse keeps fp32 master copies of the sparse weights")
    for dim_name, size in (("d_out", d_out), ("d_in", d_in)):
        if size % DIM_ALIGNMENT or size < DIM_ALIGNMENT:
            raise ValueError(f"{name}: {dim_name} = {size} is not a multiple of {DIM_ALIGNMENT}, which cuSPARSELt "
                             "requires; keep this layer dense with filter_fn, or use compress=False")
