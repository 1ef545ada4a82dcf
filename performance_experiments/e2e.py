"""End-to-end building blocks: the model variants, their training step and inference calls, and state accounting.

Variants (what `build_variant` returns, all from the same seeded random model):

* ``dense``            the transformers model as built; torch's fused AdamW over every parameter.
* ``slope``            `slope.prune_model(compress=True)` (cuSPARSELt) + `ADAMWSparse` for the compressed layers +
                       fused AdamW for the rest (embeddings, norms, LM head, block 0's q/k/v). With
                       ``simulate=True`` (always on the CPU) it is ``compress=False``: the exact simulator, which
                       computes with dense GEMMs, so its times say nothing about speed.
* ``fst``              `prune_model(method="fst")`: the FST-style baseline *simulated* (dense GEMMs plus a
                       transposable mask recomputed every forward); the library has no compressed FST kernels.
* ``slope-merged``     ``prune_model(compress=True, add_lora=True, lora_rank=r, merge_lora=True)``: inference with
                       the down-adapter merged into W's compressed matrix (may be refused by this library version).
* ``slope-unmerged``   the same adapters applied as two extra skinny GEMMs per layer (``merge_lora=False``).

Precision: ``half`` builds the model in fp16/bf16 (torch's AdamW then keeps its moments in 16 bits, while
ADAMWSparse always keeps fp32 masters and moments); ``amp`` keeps fp32 parameters and runs under autocast, so both
sides have fp32 optimizer state. The static-memory accounting differs accordingly (see `analytic_static_bytes`).
"""
from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field

import torch

import slope
from experiments.bench import capture_graph
from slope.prune import is_dense_linear, paper_filter

from .models import SLOPE_SPARSE_BYTES, STATE_BYTES

VARIANTS = ("dense", "slope", "fst")
ADAPTER_MODES = ("merged", "unmerged")


@dataclass
class Variant:
    name: str                 # the CSV's variant label
    model: torch.nn.Module
    optimizers: list = field(default_factory=list)
    autocast: torch.dtype | None = None
    note: str = ""


# Learning rate of every timed optimizer: 0. Each step still runs all of its work — torch's fused AdamW and
# ADAMWSparse read and write every weight and moment whatever the rate, and W_RCᵀ's mask is re-derived — but the
# weights stay at their random init, so no variant is timed on inf/NaN data. At 1e-5 the dense fp16 run of
# `--precision half` (16-bit weights and Adam moments) diverged by its 5th step (OPT-13B, 8 blocks), and an fp16
# GEMM on NaN data ran 14% faster than on finite data on an H100 (8192x5120 @ 5120x20480: 2.03 vs 2.37 ms; bf16:
# no difference), so those dense steps looked faster than they are (measured at 9274cc6).
TIMING_LR = 0.0


def _dense_optimizer(params, device) -> torch.optim.Optimizer:
    # fused AdamW is the fastest torch AdamW on the GPU; the CPU toy path uses the default implementation
    return torch.optim.AdamW(params, lr=TIMING_LR, weight_decay=0.1, fused=torch.device(device).type == "cuda")


def build_variant(kind: str, make_model, *, device, dtype: torch.dtype, precision: str = "half",
                  simulate: bool = False, adapter_rank: str = "0", adapter_mode: str = "unmerged",
                  train: bool = True, tiling: bool = True, implementation: str = "auto",
                  mask_change_freq: int = 1) -> Variant:
    """Build one variant from ``make_model()`` (a fresh seeded model in the right dtype on ``device``).

    ``tiling`` reaches the merged inference layers; ``implementation`` ("auto", "extension" = the cached
    cuSPARSELt extension, "torch" = torch's private ``_cslt_sparse_mm``) the compressed training layers;
    ``mask_change_freq`` goes to ADAMWSparse (1 = W_RCᵀ's mask re-derived every step, the paper's semantics).
    """
    model = make_model()
    autocast = dtype if precision == "amp" else None
    compress_dtype = dtype if precision == "amp" else None
    rank = adapter_rank if adapter_rank not in ("", "0") else 0
    if kind == "dense":
        variant = Variant("dense", model, autocast=autocast)
        if train:
            variant.optimizers = [_dense_optimizer(model.parameters(), device)]
        return variant
    if kind == "fst":
        slope.prune_model(model, method="fst")
        variant = Variant("fst (simulated)", model, autocast=autocast,
                          note="dense GEMMs + transposable 2:4 mask recomputed every forward (no FST kernels)")
        if train:
            variant.optimizers = [_dense_optimizer(model.parameters(), device)]
        return variant
    if kind != "slope":
        raise ValueError(f"variant={kind!r} is unknown; choose one of {VARIANTS}")
    adapters = dict(add_lora=bool(rank), lora_rank=rank, merge_lora=bool(rank) and adapter_mode == "merged")
    if simulate:
        slope.prune_model(model, compress=False, **adapters)
        name = "slope (simulated)"
    else:
        slope.prune_model(model, compress=True, tiling=tiling, backend="cusparselt", compress_dtype=compress_dtype,
                          implementation=implementation, **adapters)
        name = "slope"
    if rank:
        name += f" {adapter_mode} adapters"
    layers = slope.sparse_layers(model)
    impl = sorted({getattr(getattr(layer, "forward_op", None) or (getattr(layer, "ops", None) or [None])[0],
                           "implementation", "dense simulator") for layer in layers.values()})
    variant = Variant(name, model, autocast=autocast, note=f"{len(layers)} sparse linears; kernels: {','.join(impl)}")
    if train:
        if simulate:
            variant.optimizers = [_dense_optimizer(model.parameters(), device)]
        else:
            from slope.optim import ADAMWSparse, dense_parameters

            variant.optimizers = [ADAMWSparse(model, lr=TIMING_LR, weight_decay=0.1,
                                              mask_change_freq=mask_change_freq),
                                  _dense_optimizer(dense_parameters(model), device)]
    return variant


def sparse_able_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The linears SLoPe sparsifies (already sparse ones, or dense ones `paper_filter` would pick), by name."""
    sparse = slope.sparse_layers(model)
    if sparse:
        return dict(sparse)
    return {n: m for n, m in model.named_modules() if is_dense_linear(m) and paper_filter(m, n)}


def _autocast(variant: Variant, device):
    if variant.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=variant.autocast)


def train_step(variant: Variant, input_ids: torch.Tensor, device, timer=None) -> torch.Tensor:
    """One full step: forward with the LM loss, backward, every optimizer's step, gradients released."""
    phase = timer.phase if timer is not None else (lambda _name: contextlib.nullcontext())
    with phase("forward"), _autocast(variant, device):
        loss = variant.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    with phase("backward"):
        loss.backward()
    with phase("optimizer"):
        for optimizer in variant.optimizers:
            optimizer.step()
        for optimizer in variant.optimizers:
            optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def forward_backward(variant: Variant, input_ids: torch.Tensor, device) -> torch.Tensor:
    """Forward and backward only (gradients stay, for the static-state count)."""
    with _autocast(variant, device):
        loss = variant.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    return loss.detach()


def to_inference(variant: Variant, dtype: torch.dtype, *, prepare: bool = True, tiling: bool = True,
                 dense_fallback_tokens: int | str = 0, implementation: str = "auto",
                 few_token_kernel_tokens: int | str | None = None, separate_mask: bool | str = True) -> str:
    """Make a variant's model an inference model, in place; returns a note on the layers it now has.

    Optimizer state and gradients go; an amp model is cast to the 16-bit dtype; compressed training layers become
    the library's inference layers (`slope.prepare_inference`: no W_RCᵀ, adapters merged, square tiles when
    ``tiling``) when ``prepare`` — the unmerged-adapter comparison keeps the training layers instead.
    ``few_token_kernel_tokens``, ``separate_mask``: see `slope.SLoPeInferenceLinear` (None: the library's default).
    """
    from slope.inference import FEW_TOKEN_KERNEL_TOKENS
    from slope.compressed import CompressedSLoPeLinear

    variant.optimizers.clear()
    model = variant.model
    model.zero_grad(set_to_none=True)
    model.eval()
    if variant.autocast is not None:
        model.to(dtype)
        variant.autocast = None
    layers = slope.sparse_layers(model)
    if prepare and any(isinstance(layer, CompressedSLoPeLinear) for layer in layers.values()):
        few = FEW_TOKEN_KERNEL_TOKENS if few_token_kernel_tokens is None else few_token_kernel_tokens
        slope.prepare_inference(model, tiling=tiling, dense_fallback_tokens=dense_fallback_tokens,
                                implementation=implementation, few_token_kernel_tokens=few,
                                separate_mask=separate_mask)
        layers = slope.sparse_layers(model)
    else:
        # Layers that are inference layers already (``prune_model(merge_lora=True)`` builds them with the library's
        # defaults) still get the settings asked for here: the merged-adapter decode rows up to 7219cbf ran at the
        # default few-token threshold (1 token) although the config said "auto", with no note saying so.
        for layer in layers.values():
            if few_token_kernel_tokens is not None and hasattr(layer, "set_few_token_kernel"):
                layer.set_few_token_kernel(few_token_kernel_tokens)
            if dense_fallback_tokens and hasattr(layer, "set_dense_fallback"):
                layer.set_dense_fallback(dense_fallback_tokens)
    kinds = sorted({type(layer).__name__ for layer in layers.values()})
    tiles = sorted({len(layer.rows) for layer in layers.values() if hasattr(layer, "rows")})
    few = sorted({layer.few_token_kernel_tokens for layer in layers.values() if hasattr(layer, "few_token_kernel_tokens")})
    from slope.kernels import sparse_gemv

    launches = "" if sparse_gemv.DIRECT_LAUNCH else " (launched through Triton's JIT: SLOPE_GEMV_DIRECT_LAUNCH=0)"
    in_metadata = [layer.mask_in_metadata for layer in layers.values() if hasattr(layer, "mask_in_metadata")]
    return (f"inference layers: {','.join(kinds) or 'dense'}" + (f" (tiles per layer: {tiles})" if tiles else "")
            + masks_note(in_metadata) + (f"; few-token kernel at <= {few} tokens{launches}" if few else ""))


def launchers_note(layers) -> str:
    """Which launchers the few-token kernel's direct launches went through in these layers, once they have run
    (`slope.inference.SLoPeInferenceLinear.few_token_launchers`): "static" (PyTorch's C++ launcher), "triton" (the
    compiled kernel's own), and how many calls went through Triton's JIT instead (a few per shape; far more means
    the eager rows paid the JIT's host time: direct launches turned off at run time, or a plan key that keeps
    changing); empty where no few-token kernel ran."""
    layers = [layer for layer in layers if hasattr(layer, "few_token_launchers")]
    used = sorted(set().union(*(layer.few_token_launchers() for layer in layers)))
    jit = sum(layer.few_token_jit_launches() for layer in layers)
    from slope.kernels import sparse_gemv

    off = "" if sparse_gemv.DIRECT_LAUNCH else ", direct launches off by the end"
    note = f"; few-token direct launches: {'+'.join(used)} launcher" if used else ""
    return note + (f"; few-token JIT launches: {jit} in {len(layers)} layers{off}" if jit else "")


def masks_note(in_metadata: list[bool]) -> str:
    """The row note's part on where the inference layers keep their masks (per layer: in cuSPARSELt's metadata
    only, or beside it as a copy). `experiments.claims_perf_e2e.mask_placement` reads it back."""
    if not in_metadata:
        return ""
    copies = len(in_metadata) - sum(in_metadata)
    return (f"; masks: cuSPARSELt's metadata only in {sum(in_metadata)} of {len(in_metadata)} layers"
            + (f", {copies} keep a mask copy" if copies else ""))


def prefill_fn(model, input_ids: torch.Tensor):
    """A prompt's forward with no cache, keeping only the last position's logits (as generation does)."""
    def run():
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    return run


def _decode_inputs(batch: int, context: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (batch, context) prompt and (batch, 1) next token every decode measurement uses (seeded)."""
    generator = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(0, vocab, (batch, context), generator=generator).to(device)
    return prompt, torch.randint(0, vocab, (batch, 1), generator=generator).to(device)


def decode_fn(model, batch: int, context: int, vocab: int, device):
    """One-token forward against a KV cache of ``context`` tokens; the cache is cropped back after each call, so
    every timed call sees the same cache length. Returns (fn, cache)."""
    prompt, token = _decode_inputs(batch, context, vocab, device)
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True, logits_to_keep=1).past_key_values
    del prompt

    def run():
        with torch.no_grad():
            model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)  # negative = drop that many tokens (the form every transformers 4.4x-5.x accepts)
    return run, cache


def static_decode_step(model, batch: int, context: int, vocab: int, device):
    """The decode step of `decode_fn` over a static KV cache, written so that it can be captured in a CUDA graph.

    Returns (step, cache); ``step()`` runs one token against a ``context``-token cache and returns its logits,
    the same token and prompt as `decode_fn` (so the same logits). What makes it capturable and repeatable:

    * a `transformers.StaticCache` of exactly ``context + 1`` slots: fixed addresses, and after the step every slot
      is filled, so attending to the whole cache is exact;
    * the positions and a prepared 4-D all-ones mask are given, so neither the model nor `create_causal_mask`
      reads the cache length on the host (a GPU→host copy, illegal while capturing; transformers 5.x keeps it
      on the GPU in ``cumulative_length``). The explicit mask makes SDPA take its masked (memory-efficient)
      kernel, on both sides of a dense-vs-SLoPe comparison;
    * each step first puts the cache's write position back to ``context`` (the tensor counter and, for
      sliding-window layers, its host twin), so every call or replay writes the same slot.
    """
    from transformers import StaticCache

    prompt, token = _decode_inputs(batch, context, vocab, device)
    positions = torch.full((batch, 1), context, device=device, dtype=torch.long)
    mask = torch.ones(batch, 1, 1, context + 1, device=device, dtype=torch.bool)
    cache = StaticCache(config=model.config, max_cache_len=context + 1)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    del prompt

    def rewind():
        for layer in cache.layers:
            for name in ("cumulative_length", "cumulative_length_int"):
                counter = getattr(layer, name, None)
                if isinstance(counter, torch.Tensor):
                    counter.fill_(context)
                elif isinstance(counter, int):
                    setattr(layer, name, context)

    def step():
        rewind()
        with torch.no_grad():
            return model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1).logits
    return step, cache


def graph_decode_fn(model, batch: int, context: int, vocab: int, device, warmup: int = 3):
    """`static_decode_step` captured in one CUDA graph: returns (replay, held). Replaying costs the step's GPU
    work plus one launch, which is how serving engines run decode; the warm-up calls run first on a side stream
    (cuSPARSELt algorithm choice, Triton autotuning and compilation must not happen inside the capture).
    ``held`` keeps the graph and its cache alive; ``held["logits"]`` is the buffer each replay writes."""
    step, cache = static_decode_step(model, batch, context, vocab, device)
    graph, logits = capture_graph(step, warmup=warmup)
    return graph.replay, {"graph": graph, "cache": cache, "logits": logits}


# ----- static state --------------------------------------------------------------------------------------------

def state_bytes(model: torch.nn.Module, optimizers=()) -> dict[str, int]:
    """Bytes held by parameters, gradients, optimizer state and buffers; each storage counted once.

    Storages, not tensors, are counted: a compressed layer's ``values`` Parameter is a view into its packed
    buffer (counted once, under params), and tied embeddings share one storage.
    """
    seen: set[tuple[int, str]] = set()
    out = {"params": 0, "grads": 0, "optimizer": 0, "buffers": 0}

    def add(tensor, category):
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), str(tensor.device))
        if storage.nbytes() == 0 or key in seen:
            return
        seen.add(key)
        out[category] += storage.nbytes()

    params = list(model.parameters())
    for p in params:
        add(p, "params")
    for b in model.buffers():
        add(b, "buffers")
    for p in params:
        add(p.grad, "grads")
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for value in state.values():
                add(value, "optimizer")
    out["total"] = sum(out.values())
    return out


def analytic_static_bytes(sparse: int, other: int, precision: str, *, training: bool,
                          adapters: tuple[int, int] = (0, 0), merged: bool = False,
                          mask_copies: int | None = None) -> dict[str, float]:
    """Static bytes expected for dense and SLoPe from element counts (the accounting the ratios are judged by).

    Training: dense = all elements x (weight + grad + 2 moments) at `STATE_BYTES[precision]`; SLoPe = sparse-able
    elements x `SLOPE_SPARSE_BYTES` (W and W_RCᵀ compressed at 9/16, kept-half gradient, fp32 master and moments,
    4-bit masks) + the rest as dense. Inference: 16-bit weights; sparse-able weights at 9/16 (values + metadata,
    the 2:4 storage bound) plus, on the ``mask_copies`` of them (None: all) whose layer keeps a mask of its own
    beside cuSPARSELt's metadata, one byte per group of 4 (1/8 of a 16-bit weight: 0.6875 of dense there);
    ``adapters`` = (elements of the L's, of the R's), 16-bit, a merged L at 9/16.
    """
    if training:
        per = STATE_BYTES[precision]
        return {"dense": (sparse + other) * per, "slope": sparse * SLOPE_SPARSE_BYTES + other * per}
    left, right = adapters
    adapter_bytes = left * 2 * (9 / 16 if merged else 1) + right * 2
    copies = sparse if mask_copies is None else mask_copies
    return {"dense": (sparse + other) * 2, "slope": sparse * 2 * 9 / 16 + copies * 0.25 + other * 2 + adapter_bytes}


def mask_copy_elements(model: torch.nn.Module) -> int:
    """Weight elements of the sparse-able linears whose layer holds a mask (``mask_nibbles``) of its own: every
    training layer; an inference layer only where cuSPARSELt's metadata cannot stand in for it."""
    return sum(m.in_features * m.out_features for m in sparse_able_modules(model).values()
               if getattr(m, "mask_nibbles", None) is not None)


def linear_state_bytes(model: torch.nn.Module) -> int:
    """Parameters + buffers of the sparse-able linears alone (the part 2:4 storage shrinks), each storage once."""
    return state_bytes(torch.nn.ModuleList(sparse_able_modules(model).values()))["total"]


def adapter_elements(model: torch.nn.Module, rank: int) -> tuple[int, int]:
    """Elements of all L's (d_in x r) and all R's (r x d_out) over the sparse-able linears."""
    modules = sparse_able_modules(model).values()
    return (sum(rank * m.in_features for m in modules), sum(rank * m.out_features for m in modules))


def describe(error: Exception) -> str:
    """One line for a CSV note: the exception and where it was raised (file:line), to find it from the CSV alone."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}".replace("\n", " ")[:400]


def free_memory() -> None:
    """Collect garbage and return cached CUDA blocks, so the next variant starts from a clean allocator."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
