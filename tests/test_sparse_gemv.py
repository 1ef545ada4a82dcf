"""The few-token 2:4 kernel against a masked dense fp64 reference, under TRITON_INTERPRET=1 on CPU and on the GPU."""
import pytest
import torch

from tests.conftest import DEVICES

pytest.importorskip("triton")

from slope import masks
from slope.kernels import nm_pack
from slope.kernels.sparse_gemv import sparse_gemv

_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# bf16 only on the GPU: Triton's CPU interpreter returns garbage for bf16 (DESIGN §5).
CASES = [pytest.param("cpu", torch.float16, id="cpu-fp16"), pytest.param("cpu", torch.float32, id="cpu-fp32")]
CASES += [pytest.param("cuda", d, id=f"cuda-{n}", marks=_CUDA) for d, n in ((torch.float16, "fp16"),
                                                                            (torch.bfloat16, "bf16"))]


def _sparse(n, k, device, dtype):
    w = torch.randn(n, k, device=device).to(dtype)
    mask = masks.row_mask(w, 2, 4)
    return w * mask, w[mask].view(n, k // 2), nm_pack.pack_nibbles(mask)


def _check(result, x, dense, bias, dtype):
    reference = x.double() @ dense.double().t() + (0 if bias is None else bias.double())
    # torch's own rounding at this dtype (fp32 accumulation, one rounding) bounds ours, with 2x slack
    torch_result = (x.float() @ dense.float().t() + (0 if bias is None else bias.float())).to(dtype)
    bound = 2 * (torch_result.double() - reference).abs().max().item() + 1e-5 * reference.abs().max().item()
    assert result.dtype == dtype
    assert (result.double() - reference).abs().max().item() <= bound


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 5, 16, 70])  # 70: two token blocks of 64
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("form", ["fma", "dot"])
@pytest.mark.parametrize("words", [False, True], ids=["values", "words"])  # the kept pairs read as values / words
def test_matches_masked_dense_fp64(device, dtype, tokens, bias, form, words):
    n, k = 40, 200  # neither a multiple of the row block nor of the k block: both tails are masked
    dense, values, nibbles = _sparse(n, k, device, dtype)
    x = torch.randn(tokens, k, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if bias else None
    _check(sparse_gemv(x, values, nibbles, b, form=form, words=words), x, dense, b, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 3])  # one token sums per (row, group) to the end; a token block per k block
@pytest.mark.parametrize("words", [False, True], ids=["values", "words"])
@pytest.mark.parametrize("products", ["kept", "positions"])
def test_fma_form_products_both_match_masked_dense_fp64(device, dtype, tokens, words, products, monkeypatch):
    # the FMA form's two ways to form its products (`sparse_gemv.FMA_PRODUCTS`); rows past N, a k tail inside the
    # k block, and a split K (a short weight with a long k), so that zero masks past the end meet the selects
    from slope.kernels import sparse_gemv as module

    monkeypatch.setattr(module, "FMA_PRODUCTS", products)
    for n, k in ((40, 200), (8, 4096)):
        dense, values, nibbles = _sparse(n, k, device, dtype)
        x = torch.randn(tokens, k, device=device).to(dtype)
        b = torch.randn(n, device=device).to(dtype)
        _check(sparse_gemv(x, values, nibbles, b, form="fma", words=words), x, dense, b, dtype)


def test_word_loads_need_aligned_values_and_default_to_the_dot_form(monkeypatch):
    from slope.kernels import sparse_gemv as module

    _, values, nibbles = _sparse(8, 16, "cpu", torch.float16)
    x = torch.randn(2, 16).half()
    shifted = torch.empty(values.numel() + 1, dtype=torch.float16)[1:].view(values.shape)  # 2-byte aligned only
    shifted.copy_(values)
    with pytest.raises(ValueError, match="words=True reads values in pairs"):
        sparse_gemv(x, shifted, nibbles, words=True)
    seen = []
    monkeypatch.setattr(module, "split_k", lambda *a: seen.append(a[-1]) or 1)

    class Kernel:  # records the launch instead of running it (an autotuner that has not chosen a config yet)
        best_config = None

        def __getitem__(self, grid):
            return lambda *args, **meta: seen.append(meta["WORDS"])

    import slope.kernels.sparse_gemv_triton as triton_module
    monkeypatch.setattr(triton_module, "sparse_gemv_kernel", Kernel())
    monkeypatch.setattr(triton_module, "sparse_gemv_fma_kernel", Kernel())
    sparse_gemv(x, values, nibbles, form="dot")
    sparse_gemv(x, shifted, nibbles, form="dot")  # not aligned: read as values, no error
    sparse_gemv(x, values, nibbles, form="fma")
    assert seen == ["dot", 32, "dot", 0, "fma", 0]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("form", ["fma", "dot"])
def test_tiled_values_view_and_column_block_output(device, dtype, form):
    # a tiled layer's W_R: 3 tiles of 16 rows inside one buffer, with a gap (cuSPARSELt metadata) after each tile
    tiles, rows, k, gap = 3, 16, 64, 96
    dense, values, nibbles = _sparse(tiles * rows, k, device, dtype)
    buffer = torch.full((tiles, rows * k // 2 + gap), float("nan"), device=device, dtype=dtype)
    buffer[:, : rows * k // 2] = values.reshape(tiles, -1)
    view = buffer.as_strided((tiles, rows, k // 2), (buffer.stride(0), k // 2, 1))
    x = torch.randn(3, k, device=device).to(dtype)
    wide = torch.zeros(3, tiles * rows + 32, device=device, dtype=dtype)
    result = sparse_gemv(x, view, nibbles, out=wide[:, 8:8 + tiles * rows], form=form)
    assert result.data_ptr() == wide[:, 8:].data_ptr()
    _check(wide[:, 8:8 + tiles * rows], x, dense, None, dtype)
    assert not wide[:, :8].any() and not wide[:, 8 + tiles * rows:].any()  # nothing written beside the block


def test_bad_inputs_name_the_argument():
    _, values, nibbles = _sparse(8, 16, "cpu", torch.float16)
    x = torch.randn(2, 16).half()
    with pytest.raises(ValueError, match="K = 18 must be a multiple of 4"):
        sparse_gemv(torch.randn(2, 18).half(), values, nibbles)
    with pytest.raises(ValueError, match="values must be"):
        sparse_gemv(x, values.t(), nibbles)
    with pytest.raises(ValueError, match="nibbles must be"):
        sparse_gemv(x, values, nibbles[:4])
    with pytest.raises(ValueError, match="bias must be"):
        sparse_gemv(x, values, nibbles, torch.zeros(3).half())
    with pytest.raises(ValueError, match="form must be"):
        sparse_gemv(x, values, nibbles, form="wmma")
    with pytest.raises(ValueError, match="out must be"):
        sparse_gemv(x, values, nibbles, out=torch.empty(8, 2).half().t())


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 3, 20])  # fma, fma with a padded token block, dot
def test_split_k_for_few_rows_and_long_k(device, dtype, tokens, monkeypatch):
    from slope.kernels import sparse_gemv as sparse_gemv_module
    from slope.kernels.sparse_gemv import split_k

    n, k = 24, 2304  # an adapter-like block: one row block, so k is cut in two (whole 512 blocks: 1536 and 768)
    assert split_k(n, k) == 2 and split_k(20480, 5120) == 1
    # the dot form aims for more programs than the FMA form, but only where there were too few (measured)
    assert split_k(5120, 20480, 1, "fma") == 2 and split_k(5120, 20480, 1, "dot") == 4
    assert split_k(14336, 4096, 1, "dot") == 1
    for k, align in ((k, sparse_gemv_module.K_CHUNK_ALIGN), (2208, 16)):  # 2208 in 1104s: ends inside a k block
        monkeypatch.setattr(sparse_gemv_module, "K_CHUNK_ALIGN", align)
        dense, values, nibbles = _sparse(n, k, device, dtype)
        x = torch.randn(tokens, k, device=device).to(dtype)
        b = torch.randn(n, device=device).to(dtype)
        wide = torch.zeros(tokens, n + 8, device=device, dtype=dtype)
        sparse_gemv(x, values, nibbles, b, out=wide[:, 8:])
        _check(wide[:, 8:], x, dense, b, dtype)
        assert not wide[:, :8].any()


def _adapter_case(n, k, tokens, rank, device, dtype, bias):
    """A weight, an adapter of ``rank`` columns inside its rows rounded up to 32 (all nonzero: reading a column past
    the rank shows), R, the inputs and the fp64 reference with the merged-adapter term."""
    dense, values, nibbles = _sparse(n, k, device, dtype)
    left, left_values, left_nibbles = _sparse(-rank % 32 + rank, k, device, dtype)
    right = torch.randn(rank, n, device=device).to(dtype)
    x = torch.randn(tokens, k, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if bias else None
    scale = 1 / rank
    z = x.double() @ left.double().t()
    reference = (x.double() @ dense.double().t() + scale * z[:, :rank] @ right.double()
                 + (0 if b is None else b.double()))
    # torch's rounding (Z stored at this dtype, as the unfused merge does; fp32 sums) bounds ours, with 2x slack
    z_rounded = (x.float() @ left.float().t()).to(dtype)[:, :rank]
    torch_result = (x.float() @ dense.float().t() + scale * z_rounded.float() @ right.float()
                    + (0 if b is None else b.float())).to(dtype)
    bound = 2 * (torch_result.double() - reference).abs().max().item() + 1e-5 * reference.abs().max().item()
    return (values, nibbles, b), (left_values, left_nibbles), right, scale, x, reference, bound


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 3, 20])  # fma, fma over 3 token blocks, dot (the tensor-core merge)
@pytest.mark.parametrize("k", [256, 2304])  # 2304: both the 40 rows and the adapter rows split K (finish kernel)
# 136: beyond the default layout's unroll limit (a loop of 16-column chunks, the last one partial); the other
# layouts: `test_adapter_epilogue_layouts_match_fp64_reference`
@pytest.mark.parametrize("bias,rank", [(False, 5), (True, 5), (True, 136)])
def test_adapter_term_in_the_epilogue_matches_fp64_reference(device, dtype, tokens, k, bias, rank):
    """Y = x·Wᵀ + b + Z·R/r, Z = x·L_pᵀ from the adapter rows' fp32 partials (`GemvPlan.partials`), added by the W
    launch's store (under split K into its first piece); through a plan and through `sparse_gemv`."""
    from slope.kernels.sparse_gemv import ADAPTER_EPILOGUE, GemvPlan, geometry, split_k

    n, adapter_rows = 40, -rank % 32 + rank
    assert (rank > ADAPTER_EPILOGUE["rank_unroll"]) == (rank == 136)
    (values, nibbles, b), (left_values, left_nibbles), right, scale, x, reference, bound = _adapter_case(
        n, k, tokens, rank, device, dtype, bias)
    assert (split_k(n, k) > 1) == (k == 2304) and (split_k(adapter_rows, k) > 1) == (k == 2304)
    rows = GemvPlan(left_values, left_nibbles, None, adapter_rows, k, *geometry(left_values, k)[1:])
    z = rows.partials(x)
    assert z.dtype == torch.float32 and z.shape == (1 + (k == 2304), tokens, adapter_rows)
    plan = GemvPlan(values, nibbles, b, n, k, *geometry(values, k)[1:], adapter_right=right, adapter_scale=scale)
    for result in (plan(x, torch.empty(tokens, n, device=device, dtype=dtype), "auto", z),
                   sparse_gemv(x, values, nibbles, b, adapter=(z, right, scale)),
                   sparse_gemv(x, values, nibbles, b, adapter=(z.sum(0), right, scale))):  # Z whole, 2-D
        assert result.dtype == dtype
        assert (result.double() - reference).abs().max().item() <= bound


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 20])
@pytest.mark.parametrize("settings", [dict(spread=False, rank_block=64, rank_unroll=512, reduce_once=True),
                                      dict(spread=True, rank_block=64, rank_unroll=64, reduce_once=True),
                                      dict(spread=True, rank_block=32, rank_unroll=512, reduce_once=False)],
                         ids=["first-piece-unrolled-once", "spread-loop-once", "spread-unrolled"])
def test_adapter_epilogue_layouts_match_fp64_reference(device, dtype, tokens, settings):
    """Each `adapter_epilogue` layout gives the fp64 reference's numbers (rank 136 under split K: the first piece
    adding every column unrolled, the pieces sharing them in a loop or unrolled; at one token summed per chunk or
    once; the default layout: `test_adapter_term_in_the_epilogue_matches_fp64_reference`), and the settings come
    back after."""
    from slope.kernels.sparse_gemv import ADAPTER_EPILOGUE, GemvPlan, adapter_epilogue, geometry

    n, k, rank = 40, 2304, 136
    before = dict(ADAPTER_EPILOGUE)
    (values, nibbles, b), (left_values, left_nibbles), right, scale, x, reference, bound = _adapter_case(
        n, k, tokens, rank, device, dtype, True)
    with adapter_epilogue(**settings):
        rows = GemvPlan(left_values, left_nibbles, None, 160, k, *geometry(left_values, k)[1:])
        plan = GemvPlan(values, nibbles, b, n, k, *geometry(values, k)[1:], adapter_right=right, adapter_scale=scale)
        result = plan(x, torch.empty(tokens, n, device=device, dtype=dtype), "auto", rows.partials(x))
    assert ADAPTER_EPILOGUE == before
    assert (result.double() - reference).abs().max().item() <= bound


def test_adapter_epilogue_settings_are_checked():
    from slope.kernels.sparse_gemv import adapter_epilogue

    with pytest.raises(ValueError, match="unknown settings .'spreed'."):
        with adapter_epilogue(spreed=True):
            pass
    with pytest.raises(ValueError, match="rank_block must be 16, 32, 64 or 128"):
        with adapter_epilogue(rank_block=24):
            pass


def test_adapter_operands_are_checked():
    from slope.kernels.sparse_gemv import GemvPlan, geometry

    (values, nibbles, _), (left_values, left_nibbles), right, scale, x, _, _ = _adapter_case(
        16, 64, 2, 4, "cpu", torch.float16, False)
    plain = GemvPlan(values, nibbles, None, 16, 64, *geometry(values, 64)[1:])
    rows = GemvPlan(left_values, left_nibbles, None, 32, 64, *geometry(left_values, 64)[1:])
    z = rows.partials(x)
    with pytest.raises(ValueError, match="z .* goes with a plan built with adapter_right"):
        plain(x, torch.empty(2, 16).half(), "auto", z)
    merged = GemvPlan(values, nibbles, None, 16, 64, *geometry(values, 64)[1:], adapter_right=right)
    with pytest.raises(ValueError, match="this plan has an adapter"):
        merged(x, torch.empty(2, 16).half())
    with pytest.raises(ValueError, match="partial sums"):
        merged.partials(x)
    with pytest.raises(ValueError, match="adapter_right must be .rank, N = 16."):
        GemvPlan(values, nibbles, None, 16, 64, *geometry(values, 64)[1:], adapter_right=right.t())
    with pytest.raises(ValueError, match="adapter right must be"):
        sparse_gemv(x, values, nibbles, adapter=(z, right[:, :8], scale))
    with pytest.raises(ValueError, match="adapter z must be .tokens = 2, >= rank = 4."):
        sparse_gemv(x, values, nibbles, adapter=(z[:, :1], right, scale))
    with pytest.raises(ValueError, match="adapter z must be floating point"):
        sparse_gemv(x, values, nibbles, adapter=(z.int(), right, scale))
    with pytest.raises(ValueError, match="tuple"):
        sparse_gemv(x, values, nibbles, adapter=[z, right, scale])


def test_launch_skips_the_autotuner_once_it_chose_a_config(monkeypatch):
    """The first launch of a key goes through the autotuner; later ones straight to the JIT function with the
    config it chose (same constexprs), and a new key goes through the autotuner again."""
    import triton

    from slope.kernels import sparse_gemv as module

    calls = []

    class JitFunction:
        def __getitem__(self, grid):
            return lambda *args, **meta: calls.append(("jit", meta["BLOCK_T"], meta.get("BLOCK_N")))

    class Autotuner:
        fn = JitFunction()
        best_config = triton.Config({"BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4)

        def __getitem__(self, grid):
            return lambda *args, **meta: calls.append(("autotuner", meta["BLOCK_T"], None))

    monkeypatch.setattr(module, "_TUNED", {})
    kernel = Autotuner()
    for block_t in (16, 16, 32, 16):
        module._launch_tuned(kernel, None, (kernel, block_t), (), {"BLOCK_T": block_t})
    assert calls == [("autotuner", 16, None), ("jit", 16, 32), ("autotuner", 32, None), ("jit", 16, 32)]


def _plan(values, nibbles, bias, k):
    from slope.kernels.sparse_gemv import GemvPlan, geometry

    n, tile_rows, tile_stride = geometry(values, k)
    return GemvPlan(values, nibbles, bias, n, k, tile_rows, tile_stride)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("n,k,tokens,form", [(48, 256, 1, "auto"), (24, 2304, 1, "auto"), (24, 2304, 20, "auto"),
                                             (48, 256, 5, "dot"), (48, 256, 3, "fma")])  # rows 24: split K
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("static", [True, False], ids=["static-launcher", "triton-launcher"])
def test_plan_launches_the_compiled_kernels_directly_with_the_jits_numbers(dtype, n, k, tokens, form, bias, static,
                                                                             monkeypatch):
    from unittest import mock

    from slope.kernels import sparse_gemv as module

    monkeypatch.setattr(module, "STATIC_LAUNCH", static)

    _, values, nibbles = _sparse(n, k, "cuda", dtype)
    b = torch.randn(n, device="cuda").to(dtype) if bias else None
    plan = _plan(values, nibbles, b, k)
    x = torch.randn(tokens, k, device="cuda").to(dtype)
    shifted = torch.empty(tokens * k + 1, device="cuda", dtype=dtype)[1:].view(tokens, k)  # not 16-byte aligned
    shifted.copy_(torch.randn(tokens, k, device="cuda").to(dtype))
    expected = {id(x): sparse_gemv(x, values, nibbles, b, form=form),  # through the JIT (autotunes the key)
                id(shifted): sparse_gemv(shifted, values, nibbles, b, form=form)}
    with mock.patch.object(module, "_launch", wraps=module._launch) as jit:
        for inputs in (x, x, x, shifted, shifted):
            assert torch.equal(plan(inputs, torch.empty(tokens, n, device="cuda", dtype=dtype), form),
                               expected[id(inputs)])
        assert jit.call_count == 2  # once per key (alignment is one): the other calls launched directly
        assert plan.jit_launches == 2
        # PyTorch's launcher where asked for (it is in every torch this project supports: no silent fallback here)
        assert plan.launchers() == {"static" if static else "triton"}
        x.copy_(torch.randn(tokens, k, device="cuda").to(dtype))  # same key, new numbers: read at launch
        assert torch.equal(plan(x, torch.empty(tokens, n, device="cuda", dtype=dtype), form),
                           sparse_gemv(x, values, nibbles, b, form=form))
        calls = jit.call_count
        monkeypatch.setattr(module, "DIRECT_LAUNCH", False)
        plan(x, torch.empty(tokens, n, device="cuda", dtype=dtype), form)
        assert jit.call_count == calls + 1  # off: through the JIT every time


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("n,k,tokens,rank", [(48, 256, 1, 20), (24, 2304, 1, 20), (24, 2304, 20, 20),
                                             (5120, 5120, 1, 20), (5120, 5120, 8, 20), (512, 512, 32, 20),
                                             (5120, 5120, 1, 320)])  # rows 24 and 5120²: split K; 320: the loop
@pytest.mark.parametrize("static", [True, False], ids=["static-launcher", "triton-launcher"])
def test_merged_plan_launches_directly_with_the_jits_numbers(dtype, n, k, tokens, rank, static, monkeypatch):
    """The adapter rows' partials and the merged W launch (three changing arguments: x, out, z) launched directly
    give the JIT's numbers bit for bit, and the fp64 reference's within rounding."""
    from slope.kernels import sparse_gemv as module
    from slope.kernels.sparse_gemv import GemvPlan, geometry

    monkeypatch.setattr(module, "STATIC_LAUNCH", static)
    (values, nibbles, b), (left_values, left_nibbles), right, scale, x, reference, bound = _adapter_case(
        n, k, tokens, rank, "cuda", dtype, True)
    rows = GemvPlan(left_values, left_nibbles, None, left_values.shape[0], k, *geometry(left_values, k)[1:])
    plan = GemvPlan(values, nibbles, b, n, k, *geometry(values, k)[1:], adapter_right=right, adapter_scale=scale)
    z = module.sparse_gemv(x, left_values, left_nibbles)  # Z through the JIT, whole
    for _ in range(4):  # JIT (autotune), JIT (kept), then direct launches
        partial = rows.partials(x)
        result = plan(x, torch.empty(tokens, n, device="cuda", dtype=dtype), "auto", partial)
        assert torch.allclose(partial.sum(0).to(dtype), z, rtol=1e-2, atol=1e-2)
        assert (result.double() - reference).abs().max().item() <= bound
    assert plan.launchers() == rows.launchers() == {"static" if static else "triton"}
    again = plan(x, torch.empty(tokens, n, device="cuda", dtype=dtype), "auto", partial)
    assert torch.equal(again, result)
    if partial.shape[0] == 1:  # one piece: the sum is Z as the JIT computed it, so the merged result is too
        assert torch.equal(result, module.sparse_gemv(x, values, nibbles, b, adapter=(partial, right, scale)))


def test_plan_falls_back_to_the_jit_when_a_direct_launch_fails(monkeypatch):
    """A Triton whose launcher wants other arguments raises TypeError before launching: the plan warns once, turns
    direct launches off and gives the JIT's result (CPU interpreter here)."""
    from slope.kernels import sparse_gemv as module

    dense, values, nibbles = _sparse(16, 64, "cpu", torch.float16)
    x = torch.randn(2, 64).half()
    real = module._launch

    def launch_returning_a_broken_direct(*args, **kwargs):
        real(*args, **kwargs)

        def broken(x, out):
            raise TypeError("function takes exactly 12 arguments (20 given)")
        broken.launcher = "triton"
        return broken

    monkeypatch.setattr(module, "_launch", launch_returning_a_broken_direct)
    monkeypatch.setattr(module, "DIRECT_LAUNCH", True)
    plan = _plan(values, nibbles, None, 64)
    _check(plan(x, torch.empty(2, 16).half()), x, dense, None, torch.float16)
    with pytest.warns(UserWarning, match="launching the compiled kernel directly failed"):
        out = plan(x, torch.empty(2, 16).half())
    assert module.DIRECT_LAUNCH is False
    _check(out, x, dense, None, torch.float16)
    assert plan.jit_launches == 2  # every call went through the JIT: the first, and the one whose direct launch failed
    assert plan(x[:0], torch.empty(0, 16).half()).shape == (0, 16)  # no tokens: nothing to launch


def test_runner_binds_arguments_in_the_kernels_parameter_order(monkeypatch):
    """The direct launch passes every parameter, constexprs included, in signature order (as the JIT binds them);
    an unknown or missing parameter, or a launch result that is not a compiled kernel, gives no runner."""
    import triton.compiler

    from slope.kernels import sparse_gemv as module

    class Compiled:
        def __getitem__(self, grid):
            return ("runner", grid)

    class Jit:
        arg_names = ["x_ptr", "out_ptr", "T", "BLOCK_T", "BLOCK_N"]

    monkeypatch.setattr(triton.compiler, "CompiledKernel", Compiled)
    monkeypatch.setattr(module, "DIRECT_LAUNCH", True)
    runner, bound = module._runner(Jit(), Compiled(), (3, 1, 1), ("x", "out", 7), {"BLOCK_N": 64, "BLOCK_T": 16})
    assert runner == ("runner", (3, 1, 1)) and bound == ["x", "out", 7, 16, 64]
    runner, _ = module._runner(Jit(), Compiled(), (3, 2), ("x", "out", 7), {"BLOCK_N": 64, "BLOCK_T": 16})
    assert runner == ("runner", (3, 2, 1))  # a 2-D grid (the finish kernel's) gets its third axis
    assert module._runner(Jit(), Compiled(), (3, 1, 1), ("x", "out", 7), {"BLOCK_T": 16}) is None
    assert module._runner(Jit(), object(), (3, 1, 1), ("x", "out", 7), {"BLOCK_N": 64, "BLOCK_T": 16}) is None
    monkeypatch.setattr(module, "DIRECT_LAUNCH", False)
    assert module._runner(Jit(), Compiled(), (3, 1, 1), ("x", "out", 7), {"BLOCK_N": 64, "BLOCK_T": 16}) is None


def test_only_a_plan_builds_direct_launch_runners(monkeypatch):
    """A one-off `launch` / `sparse_gemv` call never reuses a runner, so it builds none; a `GemvPlan` does."""
    import triton

    from slope.kernels import sparse_gemv as module

    built = []
    config = triton.Config({"BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4)
    monkeypatch.setattr(module, "_launch_tuned", lambda *args: (object(), config))  # as past the autotuner
    monkeypatch.setattr(module, "_runner", lambda *args: built.append(args) or None)
    _, values, nibbles = _sparse(48, 256, "cpu", torch.float16)  # 48 rows: no split K
    x, out = torch.randn(1, 256).half(), torch.empty(1, 48).half()
    module.sparse_gemv(x, values, nibbles, out=out)
    module.launch(x, values, nibbles, None, out, *module.geometry(values, 256), "auto")
    assert built == []
    _plan(values, nibbles, None, 256)(x, out)
    assert len(built) == 1


def test_direct_launch_setting_comes_back_after_the_block(monkeypatch):
    from slope.kernels import sparse_gemv as module

    monkeypatch.setattr(module, "DIRECT_LAUNCH", True)
    with pytest.raises(RuntimeError, match="inside"):
        with module.direct_launch(False):
            assert module.DIRECT_LAUNCH is False
            raise RuntimeError("inside")
    assert module.DIRECT_LAUNCH is True


def _compressed_tiles(dense_mask_values, tiles, rows, k, dtype, device):
    """A cuSPARSELt-like buffer built on any device: per tile its kept values, then its metadata bytes as
    `nm_pack.metadata_reference` lays them out (the layout measured on the H100, checked there against the
    library's own compress), tiles back to back; plus the (tiles, rows, K/2) values view into it."""
    _, values, nibbles = dense_mask_values
    size = torch.finfo(dtype).bits // 8
    tile_bytes = rows * k * 9 // 16 * size
    packed = torch.zeros(tiles * tile_bytes, dtype=torch.uint8, device=device)
    for t in range(tiles):
        tile = packed[t * tile_bytes:(t + 1) * tile_bytes]
        tile[: rows * k // 2 * size].view(dtype).copy_(values[t * rows:(t + 1) * rows].reshape(-1))
        tile[rows * k // 2 * size:].copy_(nm_pack.metadata_reference(nibbles[t * rows:(t + 1) * rows]))
    view = packed.view(dtype).as_strided((tiles, rows, k // 2), (tile_bytes // size, k // 2, 1))
    return packed, view


FP16_CASES = [pytest.param("cpu", torch.float16, id="cpu-fp16")] + [
    pytest.param("cuda", d, id=f"cuda-{n}", marks=_CUDA) for d, n in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"))]


@pytest.mark.parametrize("device,dtype", FP16_CASES)
@pytest.mark.parametrize("tiles,tokens,form", [(1, 1, "fma"), (1, 20, "dot"), (2, 1, "fma"), (2, 3, "dot"),
                                               (3, 70, "dot")])
@pytest.mark.parametrize("metadata_words", [True, False], ids=["words", "bytes"])
def test_masks_read_from_the_cusparselt_metadata_match_masked_dense(device, dtype, tiles, tokens, form,
                                                                   metadata_words, monkeypatch):
    # the mask read from the metadata after each tile's values, not from a nibble copy: same product, whether the
    # metadata is read in 8-byte words (the default where aligned) or a byte per group
    from slope.kernels import sparse_gemv as module

    monkeypatch.setattr(module, "METADATA_WORDS", metadata_words)
    rows, k = 128, 256
    sparse = _sparse(tiles * rows, k, device, dtype)
    packed, view = _compressed_tiles(sparse, tiles, rows, k, dtype, device)
    x = torch.randn(tokens, k, device=device).to(dtype)
    b = torch.randn(tiles * rows, device=device).to(dtype)
    result = sparse_gemv(x, view if tiles > 1 else view[0], packed, b, form=form, mask_layout="cusparselt")
    _check(result, x, sparse[0], b, dtype)


def test_metadata_mask_layout_checks_its_buffer():
    sparse = _sparse(128, 128, "cpu", torch.float16)
    packed, view = _compressed_tiles(sparse, 1, 128, 128, torch.float16, "cpu")
    x = torch.randn(2, 128).half()
    with pytest.raises(ValueError, match="mask_layout must be"):
        sparse_gemv(x, view[0], packed, mask_layout="metadata")
    with pytest.raises(ValueError, match="whose first bytes are the values"):
        sparse_gemv(x, view[0], sparse[2], mask_layout="cusparselt")
    with pytest.raises(ValueError, match="multiples of 128"):
        small = _sparse(64, 128, "cpu", torch.float16)
        buffer, small_view = _compressed_tiles(small, 1, 64, 128, torch.float16, "cpu")
        sparse_gemv(x, small_view[0], buffer, mask_layout="cusparselt")
    with pytest.raises(ValueError, match="bytes, .* needed"):
        sparse_gemv(x, view[0], packed[:-1], mask_layout="cusparselt")


@pytest.mark.parametrize("meta", [1, 2], ids=["bytes", "words"])
@pytest.mark.parametrize("block_n,block_k", [(16, 64), (32, 128), (64, 64), (128, 32), (128, 256)])
@pytest.mark.parametrize("fma,rebuild", [(False, 0), (True, 0), (True, 1)], ids=["dot", "fma-positions", "fma-kept"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
def test_metadata_reads_are_right_for_every_row_block_width(meta, block_n, block_k, fma, rebuild, device):
    # the autotuner's configs run 16-128 rows and 64-512 columns per program, but the interpreter tries one: each
    # width (128 rows span two 64-row metadata bands) launched directly, two 256-row tiles
    from slope.kernels import sparse_gemv_triton as kernels

    tiles, rows, k, tokens, dtype = 2, 256, 512, 3, torch.float16
    sparse = _sparse(tiles * rows, k, device, dtype)
    packed, view = _compressed_tiles(sparse, tiles, rows, k, dtype, device)
    x = torch.randn(tokens, k, device=device).to(dtype)
    out = torch.empty(tokens, tiles * rows, device=device, dtype=dtype)
    kernel, block_t = (kernels.sparse_gemv_fma_kernel, 1) if fma else (kernels.sparse_gemv_kernel, 16)
    grid = (tiles * rows // block_n, -(-tokens // block_t), 1)
    kernel.fn[grid](x, view, packed, view, out, view, view, tokens, tiles * rows, k, x.stride(0), view.stride(0),
                    rows, out.stride(0), k, tokens * tiles * rows, 0, 0, 0, 0.0, HAS_BIAS=False, SPLIT=False,
                    MERGE=False, RANK=0, Z_SPLITS=0, SPAN=0, RANK_BLOCK=16, RANK_UNROLL=128, REDUCE_ONCE=True,
                    BLOCK_T=block_t, WORDS=32, META=meta, ESIZE=2, REBUILD=rebuild, BLOCK_N=block_n,
                    BLOCK_K=block_k)
    _check(out, x, sparse[0], None, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("block_n,block_k,warps", [(16, 128, 2), (32, 256, 2), (32, 256, 4), (64, 256, 4),
                                                   (64, 128, 4), (128, 256, 8)])
@pytest.mark.parametrize("meta", [0, 2], ids=["mask-copy", "metadata-words"])
def test_prmt_rebuild_matches_the_select_rebuild_bit_for_bit_and_fp64(dtype, block_n, block_k, warps, meta):
    # the dot form's two rebuilds of W (`sparse_gemv.REBUILD`) in each autotune row-block shape, launched directly:
    # the same weights into the same tensor-core products, so the same bits. The mask copy case has rows past N
    # (200) and a k (1000) that ends inside a k block, so zero words (loads past the end) meet the prmt tables too
    from slope.kernels import sparse_gemv_triton as kernels

    tokens = 3
    if meta:
        tiles, rows, k = 2, 256, 512
        sparse = _sparse(tiles * rows, k, "cuda", dtype)
        nibbles, values = _compressed_tiles(sparse, tiles, rows, k, dtype, "cuda")
        n, tile_stride = tiles * rows, values.stride(0)
    else:
        n, k = 200, 1000
        sparse = _sparse(n, k, "cuda", dtype)
        values, nibbles, rows, tile_stride = sparse[1].contiguous(), sparse[2], n, 0
    x = torch.randn(tokens, k, device="cuda").to(dtype)
    outs = []
    for rebuild in (0, 1):
        out = torch.empty(tokens, n, device="cuda", dtype=dtype)
        kernels.sparse_gemv_kernel.fn[(-(-n // block_n), 1, 1)](
            x, values, nibbles, values, out, values, values, tokens, n, k, x.stride(0), tile_stride, rows,
            out.stride(0), k, tokens * n, 0, 0, 0, 0.0, HAS_BIAS=False, SPLIT=False, MERGE=False, RANK=0, Z_SPLITS=0,
            SPAN=0, RANK_BLOCK=16, RANK_UNROLL=128, REDUCE_ONCE=False, BLOCK_T=16, WORDS=32, META=meta, ESIZE=2,
            REBUILD=rebuild, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    _check(outs[1], x, sparse[0], None, dtype)


def test_rebuild_mode_takes_prmt_only_for_the_dot_form_on_16_bit_words_and_kept_products_for_fma(monkeypatch):
    from slope.kernels import sparse_gemv as module

    half, single = torch.zeros(4, dtype=torch.float16), torch.zeros(4, dtype=torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert module.rebuild_mode("dot", True, half) == 1
    assert module.rebuild_mode("dot", False, half) == 0
    assert module.rebuild_mode("fma", True, half) == module.rebuild_mode("fma", False, single) == 1  # "kept"
    monkeypatch.setattr(module, "FMA_PRODUCTS", "positions")
    assert module.rebuild_mode("fma", True, half) == 0
    monkeypatch.setattr(module, "FMA_PRODUCTS", "rebuilt")
    with pytest.raises(ValueError, match="SLOPE_GEMV_FMA_PRODUCTS"):
        module.rebuild_mode("fma", True, half)
    monkeypatch.setattr(module, "FMA_PRODUCTS", "kept")
    assert module.rebuild_mode("dot", True, single) == 0
    monkeypatch.setattr(module, "REBUILD", "select")
    assert module.rebuild_mode("dot", True, half) == 0
    monkeypatch.setattr(module, "REBUILD", "prmt")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # no PTX in the interpreter; the FMA form's products are plain Triton
    assert module.rebuild_mode("dot", True, half) == 0
    assert module.rebuild_mode("fma", True, half) == 1
    monkeypatch.setattr(module, "REBUILD", "shuffle")
    with pytest.raises(ValueError, match="SLOPE_GEMV_REBUILD"):
        module.rebuild_mode("dot", True, half)


def test_static_launch_passes_only_the_cubins_arguments_as_addresses(monkeypatch):
    """PyTorch's launcher gets the arguments the cubin has, in order: no constexprs, no integer Triton specialised
    away (== 1), tensors as their addresses, a None per scratch parameter; the two changing ones at their places."""
    from slope.kernels import sparse_gemv as module

    launched = []

    class Static:  # what `_static_launch` reads of torch's StaticallyLaunchedCudaKernel
        def __init__(self, view):
            assert view._cubin_path is None and view.function == 77  # the compiled kernel's, seen through
            self.arg_tys, self.num_warps, self.shared = "OOiO", 4, 1024
            self.has_global_scratch, self.has_profile_scratch = True, False
            self.C_impl = type("C", (), {"_launch_kernel": staticmethod(lambda *a: launched.append(a))})

    class Src:
        signature = {"x_ptr": "*bf16", "values_ptr": "*bf16", "T": "i32", "K": "i32", "out_ptr": "*bf16",
                     "BLOCK": "constexpr"}
        constants = {(2,): 1}  # specialised: T == 1 (Triton 3.3+ keys it by its index path)

    class Compiled:
        function, src = 77, Src()

    names = ["x_ptr", "values_ptr", "T", "K", "out_ptr", "BLOCK"]
    values_tensor, x, out = torch.zeros(4), torch.zeros(2), torch.zeros(3)
    monkeypatch.setattr(module, "_static_kernel_class", lambda: Static)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234, raising=False)
    launch = module._static_launch(Compiled(), (5, 2), names, [None, values_tensor, 1, 512, None, 64], [0, 4])
    assert launch.launcher == "static"
    launch(x, out)
    assert launched == [(77, 5, 2, 1, 4, 1024, "OOiOO",
                         (x.data_ptr(), values_tensor.data_ptr(), 512, out.data_ptr(), None), 1234)]
    launched.clear()  # three changing (a merged launch: x, out and the adapter's partial sums)
    three = module._static_launch(Compiled(), (5, 2), names, [None, values_tensor, 1, 512, None, 64], [0, 1, 4])
    z = torch.zeros(5)
    three(x, z, out)
    assert launched[0][7] == (x.data_ptr(), z.data_ptr(), 512, out.data_ptr(), None)
    with pytest.raises(ValueError, match="2 or 3 in signature order"):
        module._static_launch(Compiled(), (5, 2), names, [None, values_tensor, 1, 512, None, 64], [4, 0])
    Static.__init__ = lambda self, view: (_ for _ in ()).throw(NotImplementedError("launch hooks"))
    assert module._static_launch(Compiled(), (5, 2), names, [None, values_tensor, 1, 512, None, 64], [0, 4]) is None


def test_plan_keeps_tritons_launcher_where_the_static_one_disagrees_with_the_jit(monkeypatch):
    """A direct launch through PyTorch's launcher is checked once against the JIT's result; one that differs warns,
    and the plan relaunches that key with Triton's launcher (CPU interpreter: the launchers are stand-ins)."""
    from slope.kernels import sparse_gemv as module

    dense, values, nibbles = _sparse(16, 64, "cpu", torch.float16)
    x = torch.randn(2, 64).half()
    real, statics = module._launch, []

    def launch(*args, static=True, **kwargs):
        real(*args, **kwargs)
        statics.append(static)

        def direct(x, out):
            real(x, *args[1:4], out, *args[5:], **kwargs)
            if static:
                out.zero_()  # a launcher handed the wrong arguments
        direct.launcher = "static" if static else "triton"
        return direct

    monkeypatch.setattr(module, "_launch", launch)
    monkeypatch.setattr(module, "DIRECT_LAUNCH", True)
    plan = _plan(values, nibbles, None, 64)
    with pytest.warns(UserWarning, match="result differs from the JIT's"):
        _check(plan(x, torch.empty(2, 16).half()), x, dense, None, torch.float16)
    assert statics == [True, False] and plan.launchers() == {"triton"}
    _check(plan(x, torch.empty(2, 16).half()), x, dense, None, torch.float16)  # the kept launch: Triton's
    assert statics == [True, False]
