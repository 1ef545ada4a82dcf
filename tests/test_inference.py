"""Compressed inference layers (merged adapters, tiling, dense fallback) against an fp64 masked-dense reference."""
from unittest import mock

import pytest
import torch
from torch import nn

import slope
from slope.kernels import sparse_gemv
from slope.inference import GRAPH_ADDMM_MAX_TOKENS, tile_rows

DTYPES = [torch.float16, torch.bfloat16]


def test_tiles_are_square_for_tall_weights_and_keep_every_adapter_row():
    assert tile_rows(256, 64, 0, tiling=True) == [64, 64, 64, 64]
    assert tile_rows(256, 64, 32, tiling=True) == [64, 64, 64, 96]  # adapter rows ride in the last tile
    assert tile_rows(256, 64, 32, tiling=False) == [288]
    assert tile_rows(64, 256, 32, tiling=True) == [96]  # wide: nothing to tile
    assert tile_rows(96, 64, 0, tiling=True) == [96]  # not tall enough
    assert tile_rows(14336, 4096, 0, tiling=True) == [3584] * 4  # LLaMA-3-8B up: near-square
    assert tile_rows(200 * 32 + 32, 64 * 32, 0, tiling=True) == [6432]  # 4 tiles of 1608 rows: not a multiple of 32


def test_inference_layers_need_a_gpu_and_name_the_layer():
    layer = slope.SLoPeLinear(64, 64, layer_name="blocks.0.fc")
    with pytest.raises(ValueError, match="blocks.0.fc"):
        slope.SLoPeInferenceLinear.from_layer(layer)


# capability marker (as in test_compressed.py): these run, marked `gpu`, on the GPU machine
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                               reason="needs an sm_80+ CUDA GPU")


def _reference(layer: slope.SLoPeLinear, x: torch.Tensor) -> torch.Tensor:
    """fp64: X·(W⊙M)ᵀ + b + (X·(L⊙M_L))·R / r, M_L = 2:4 along d_in, written from the method's definition."""
    w = layer.weight.double() * layer.mask
    y = x.double() @ w.t()
    if layer.bias is not None:
        y = y + layer.bias.double()
    if layer.lora_left is not None:
        left = layer.lora_left.double()
        groups = left.abs().t().reshape(left.shape[1], -1, 4)  # (r, d_in/4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(2, dim=-1, sorted=False).indices, True)
        left = left * keep.reshape(left.shape[1], -1).t()
        y = y + (x.double() @ left) @ layer.lora_right.double() / layer.lora_rank
    return y


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def _simulated(d_in, d_out, rank, bias, dtype):
    layer = slope.SLoPeLinear(d_in, d_out, bias=bias, device="cuda", dtype=dtype, layer_name="fc")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, device="cuda"))
        layer.set_mask(slope.row_mask(layer.weight, 2, 4))
        if bias:
            layer.bias.copy_(torch.randn(d_out, device="cuda"))
    if rank:
        layer.add_adapter(rank)
        with torch.no_grad():
            layer.lora_right.copy_(torch.randn(rank, d_out, device="cuda"))
    return layer


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiling", [True, False])
@pytest.mark.parametrize("rank,bias", [(0, True), (5, True), (40, False)])
# few_token_kernel: the token count up to which slope.kernels.sparse_gemv replaces cuSPARSELt (0: never)
@pytest.mark.parametrize("tokens,few_token_kernel", [(1, 32), (13, 32), (8, 0), (13, 0), (256, 32)])
def test_merged_tiled_output_matches_fp64_reference(dtype, tiling, rank, bias, tokens, few_token_kernel):
    layer = _simulated(64, 256, rank, bias, dtype)
    fast = slope.SLoPeInferenceLinear.from_layer(layer, tiling=tiling, few_token_kernel_tokens=few_token_kernel)
    assert fast.rows == tile_rows(256, 64, fast.adapter_rows, tiling)
    x = torch.randn(tokens, 64, device="cuda", dtype=dtype)
    reference = _reference(layer, x)
    plan_call, plan_partials = sparse_gemv.GemvPlan.__call__, sparse_gemv.GemvPlan.partials
    with torch.no_grad(), mock.patch.object(sparse_gemv.GemvPlan, "__call__", autospec=True,
                                            side_effect=plan_call) as kernel, \
            mock.patch.object(sparse_gemv.GemvPlan, "partials", autospec=True, side_effect=plan_partials) as rows:
        y = fast(x)
        # by the third call the few-token plans launch their compiled kernels directly: the same numbers
        assert torch.equal(fast(x), y) and torch.equal(fast(x), y)
    few = tokens <= few_token_kernel
    # W_R, with the adapter term in its epilogue; at one token the first call also runs the addmm path once, for
    # a CUDA-graph capture to take (few_token_merge="auto": W_R and the adapter rows into one buffer)
    warmed = few and rank > 0 and tokens <= GRAPH_ADDMM_MAX_TOKENS
    assert kernel.call_count == 3 * few + 2 * warmed
    assert rows.call_count == 3 * (few and rank > 0)  # the adapter rows' Z, first
    with torch.no_grad():
        layer.merge_adapter() if rank else None
        simulated = layer(x)
    assert y.dtype == dtype and y.shape == (tokens, 256)
    # the simulator (dense torch ops at this dtype) sets the error budget
    assert _rel(y, reference) <= 2 * _rel(simulated, reference) + 1e-3


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiling", [True, False])
@pytest.mark.parametrize("rank,tokens", [(5, 1), (40, 13), (48, 1)])  # 40: 16-column chunks, the last partial
def test_few_token_merge_in_the_epilogue_and_through_addmm_agree(dtype, tiling, rank, tokens):
    """Both places the few-token path adds Z·R/r give the fp64 reference within the simulator's budget, on a plan
    made afresh for each (the setter drops the plans); a wrong setting names the layer and the choices."""
    layer = _simulated(64, 256, rank, True, dtype)
    fast = slope.SLoPeInferenceLinear.from_layer(layer, tiling=tiling, few_token_kernel_tokens=32)
    x = torch.randn(tokens, 64, device="cuda", dtype=dtype)
    reference = _reference(layer, x)
    with torch.no_grad():
        layer.merge_adapter()
        budget = 2 * _rel(layer(x), reference) + 1e-3
        for merge in ("epilogue", "addmm", "auto", "epilogue"):
            fast.set_few_token_merge(merge)
            for _ in range(3):  # JIT, then direct launches
                y = fast(x)
                assert _rel(y, reference) <= budget, merge
    assert fast.few_token_launchers() == {"static"}
    with pytest.raises(ValueError, match="fc: few_token_merge must be one of"):
        fast.set_few_token_merge("fused")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 8])
def test_auto_merge_takes_addmm_only_in_a_captured_call_at_one_token(dtype, tokens):
    """few_token_merge="auto" (the default): eager calls add Z·R/r in the epilogue; a call captured into a CUDA graph
    at ≤ GRAPH_ADDMM_MAX_TOKENS tokens through addmm, tuned and compiled by the first eager call (autotuning cannot
    run in a capture); the replay gives the fp64 reference's numbers."""
    layer = _simulated(64, 256, 40, True, dtype)
    fast = slope.SLoPeInferenceLinear.from_layer(layer, few_token_kernel_tokens=32)
    assert fast.few_token_merge == "auto"
    x = torch.randn(tokens, 64, device="cuda", dtype=dtype)
    reference = _reference(layer, x)
    with torch.no_grad():
        layer.merge_adapter()
        budget = 2 * _rel(layer(x), reference) + 1e-3
    partials = sparse_gemv.GemvPlan.partials
    with torch.no_grad(), mock.patch.object(sparse_gemv.GemvPlan, "partials", autospec=True,
                                            side_effect=partials) as rows:
        eager = fast(x)
        eager_partials = rows.call_count
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = fast(x)
        captured_partials = rows.call_count - eager_partials
        graph.replay()
    torch.cuda.synchronize()
    assert eager_partials == 1 and captured_partials == (tokens > GRAPH_ADDMM_MAX_TOKENS)
    assert _rel(eager, reference) <= budget and _rel(captured, reference) <= budget


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).to("cuda", dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_prune_model_merge_lora_loads_a_trained_compressed_checkpoint(dtype):
    every = dict(filter_fn=lambda module, name: True)
    trained = slope.prune_model(_model(dtype), compress=True, add_lora=True, lora_rank=8, **every)
    with torch.no_grad():
        for layer in slope.sparse_layers(trained).values():
            layer.lora_right.normal_()
    served = slope.prune_model(_model(dtype), compress=True, add_lora=True, lora_rank=8, merge_lora=True, **every)
    assert all(isinstance(m, slope.SLoPeInferenceLinear) for m in slope.sparse_layers(served).values())
    assert served[0].rows == [64, 64, 64, 96] and served[2].rows == [96]
    served.load_state_dict(trained.state_dict(), strict=False)  # w_metadata / wt_* are derived: ignored
    x = torch.randn(40, 64, device="cuda", dtype=dtype)
    with torch.no_grad():
        slope.merge_lora(trained)  # the simulated merged semantics on the training layers
        expected, got = trained(x), served(x)
    assert _rel(got, expected.double()) < (2e-2 if dtype == torch.bfloat16 else 4e-3)
    # and the inference layers' own state round-trips exactly into a fresh inference model
    again = slope.prune_model(_model(dtype), compress=True, add_lora=True, lora_rank=8, merge_lora=True, **every)
    again.load_state_dict(served.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), got)
    assert set(served.state_dict()) >= {"0.values", "0.mask_nibbles", "0.lora_left", "0.lora_right", "0.bias"}


@pytest.mark.gpu
@needs_gpu
def test_dense_fallback_runs_dense_at_few_tokens_and_auto_measures():
    layer = _simulated(64, 256, 8, True, torch.float16)
    fast = slope.SLoPeInferenceLinear.from_layer(layer, dense_fallback_tokens=16)
    assert fast.dense_weight is not None
    x = torch.randn(16, 64, device="cuda", dtype=torch.float16)
    reference = _reference(layer, x)
    with torch.no_grad():
        assert _rel(fast(x), reference) < 4e-3
    fast.set_dense_fallback(0)
    assert fast.dense_weight is None
    fast.set_dense_fallback("auto")
    assert isinstance(fast.dense_fallback_tokens, int) and 0 <= fast.dense_fallback_tokens <= 4096
    fast.set_dense_fallback(0)
    fast.set_few_token_kernel("auto")  # the few-token kernel vs cuSPARSELt, measured for this shape
    assert fast.few_token_kernel_tokens in (0, 1, 8, 16, 32, 64)
    with pytest.raises(ValueError, match="few_token_kernel_tokens must be"):
        fast.set_few_token_kernel(-2)
    with pytest.raises(ValueError, match="dense_fallback_tokens must be"):
        fast.set_dense_fallback(-1)


@pytest.mark.gpu
@needs_gpu
def test_inference_layer_refuses_backward_and_rebuilds_after_adapter_change():
    layer = _simulated(64, 128, 4, False, torch.bfloat16)
    fast = slope.SLoPeInferenceLinear.from_layer(layer)
    x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward"):
        fast(x)
    with torch.no_grad():
        fast.lora_left.mul_(-1)  # a new L must reach the compressed matrix
        layer.lora_left.mul_(-1)
        assert _rel(fast(x), _reference(layer, x)) < 2e-2


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("layout", [0, 1])
def test_spmm_out_writes_one_column_block(layout):
    from slope.kernels import cusparselt

    op = cusparselt.SpMM(64, 128, torch.float16, layout=layout)
    w = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    w = w * slope.row_mask(w, 2, 4)
    x = torch.randn(16, 128, device="cuda", dtype=torch.float16)
    bias = torch.randn(64, device="cuda", dtype=torch.float16)
    out = torch.full((16, 192), 7.0, device="cuda", dtype=torch.float16)
    op.into(op.compress(w), x, bias, out, 64)
    reference = x.double() @ w.double().t() + bias.double()
    assert _rel(out[:, 64:128], reference) < 2e-3
    assert (out[:, :64] == 7).all() and (out[:, 128:] == 7).all()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tiling", [True, False])
def test_torch_private_op_fallback_builds_and_matches(tiling):
    # the fallback where the extension cannot be built: torch._cslt_* (torch 2.11 returns a 2-D compressed buffer)
    layer = _simulated(64, 256, 8, True, torch.float16)
    fast = slope.SLoPeInferenceLinear.from_layer(layer, tiling=tiling, implementation="torch")
    x = torch.randn(24, 64, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        assert _rel(fast(x), _reference(layer, x)) < 4e-3
    from slope.compressed import CompressedSLoPeLinear

    training = CompressedSLoPeLinear.from_simulated(layer, implementation="torch")  # unmerged adapters, like layer
    with torch.no_grad():
        assert _rel(training(x), layer(x).double()) < 4e-3


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiling", [True, False])
def test_mask_lives_only_in_the_cusparselt_metadata_where_its_layout_is_known(dtype, tiling):
    layer = _simulated(256, 512, 0, True, dtype)  # tiles of 256 x 256 (or one of 512 x 256): multiples of 128
    lean = slope.SLoPeInferenceLinear.from_layer(layer, tiling=tiling, few_token_kernel_tokens=32,
                                                 separate_mask="auto")
    copy = slope.SLoPeInferenceLinear.from_layer(layer, tiling=tiling, few_token_kernel_tokens=32)  # the default
    assert lean.rows == ([256, 256] if tiling else [512])
    assert lean.mask_in_metadata and lean.mask_nibbles is None and not copy.mask_in_metadata
    # the mask read back from the library's metadata is the one the layer was built with
    assert torch.equal(lean.nibbles(), copy.mask_nibbles)
    assert torch.equal(lean.effective_weight(), copy.effective_weight())
    # no uint8 state beside the compressed tiles: the layer is 9/16 of the dense weight (+ its bias)
    assert [name for name, b in lean.named_buffers() if b.dtype == torch.uint8] == ["packed"]
    with torch.no_grad():
        for tokens in (1, 13, 256):  # the few-token kernel's fma and dot forms, then cuSPARSELt
            x = torch.randn(tokens, 256, device="cuda", dtype=dtype)
            reference, simulated = _reference(layer, x), layer(x)
            assert _rel(lean(x), reference) <= 2 * _rel(simulated, reference) + 1e-3
    # state_dict keeps the canonical mask entry, and a fresh layer loads it from either kind of layer
    state = lean.state_dict()
    assert torch.equal(state["mask_nibbles"], copy.state_dict()["mask_nibbles"])
    x = torch.randn(3, 256, device="cuda", dtype=dtype)
    for source in (state, copy.state_dict()):
        fresh = slope.SLoPeInferenceLinear(256, 512, True, tiling=tiling, dtype=dtype, separate_mask="auto")
        fresh.set_few_token_kernel(32)
        assert fresh.mask_in_metadata
        fresh.load_state_dict(source)
        with torch.no_grad():
            assert torch.equal(fresh(x), lean(x))
        assert torch.equal(fresh.nibbles(), copy.mask_nibbles)
    with pytest.raises(RuntimeError, match="mask_nibbles"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "mask_nibbles"})


@pytest.mark.gpu
@needs_gpu
def test_layers_with_adapter_rows_keep_a_mask_copy_and_false_says_why():
    layer = _simulated(256, 512, 8, True, torch.bfloat16)
    fast = slope.SLoPeInferenceLinear.from_layer(layer, separate_mask="auto")
    assert not fast.mask_in_metadata and fast.mask_nibbles is not None
    with pytest.raises(ValueError, match="fc: separate_mask=False.*adapter rows"):
        slope.SLoPeInferenceLinear.from_layer(layer, separate_mask=False)
    with pytest.raises(ValueError, match="separate_mask must be"):
        slope.SLoPeInferenceLinear.from_layer(layer, separate_mask=1)
