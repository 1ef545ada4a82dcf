"""Named LLM architectures for the end-to-end speed and memory experiments, built with random weights.

The paper's speed and memory tables (OPT-2.6B … OPT-66B, LLaMA-3-8B, Mistral-v0.3-7B) time real architectures
truncated to a few transformer blocks. Here each model is a frozen `ModelSpec` holding the numbers of its
published Hugging Face config, written out in code (no hub access anywhere in this project); `build_model`
turns a spec into a transformers model of ``num_blocks`` blocks with random weights, directly on the target
device and dtype, so the full-size model never exists.

How many blocks: `choose_blocks` takes the largest count whose *estimated* training footprint (the worst of
dense, SLoPe and the FST baseline) fits a memory budget. The estimate, `estimate_train_bytes`, is deliberately
simple and conservative (state bytes per parameter + activations per token and block + logits + the FST
baseline's extra saved tensors); the CSV records the count used and the model's full depth.

Attention: ``"sdpa"`` (torch picks FlashAttention for causal, unmasked fp16/bf16 input: the paper's headline is
relative to dense *with* FlashAttention on both sides) or ``"eager"`` (math attention, the ablation).

    spec = MODELS["opt-13b"]; blocks = choose_blocks(spec, budget_bytes=50e9, tokens=8192)
    model = build_model(spec, blocks, dtype=torch.bfloat16, device="cuda")
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str               # "opt" | "llama" | "mistral": which transformers class builds it
    hidden: int
    intermediate: int         # OPT: ffn_dim
    layers: int               # full depth of the published model
    heads: int
    kv_heads: int             # grouped-query attention (LLaMA-3, Mistral); = heads for OPT
    vocab: int
    max_positions: int
    rope_theta: float = 10000.0
    paper_label: str = ""     # how the paper's tables name it

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# Numbers from each model's published config.json on the Hugging Face hub (facebook/opt-*, meta-llama/Meta-Llama-3-8B,
# mistralai/Mistral-7B-v0.3). The paper's tables call OPT-2.7B/6.7B "OPT-2.6B"/"OPT-6.6B".
MODELS: dict[str, ModelSpec] = {
    "opt-2.7b": ModelSpec("opt-2.7b", "opt", 2560, 10240, 32, 32, 32, 50272, 2048, paper_label="OPT-2.6B"),
    "opt-6.7b": ModelSpec("opt-6.7b", "opt", 4096, 16384, 32, 32, 32, 50272, 2048, paper_label="OPT-6.6B"),
    "opt-13b": ModelSpec("opt-13b", "opt", 5120, 20480, 40, 40, 40, 50272, 2048, paper_label="OPT-13B"),
    "opt-30b": ModelSpec("opt-30b", "opt", 7168, 28672, 48, 56, 56, 50272, 2048, paper_label="OPT-30B"),
    "opt-66b": ModelSpec("opt-66b", "opt", 9216, 36864, 64, 72, 72, 50272, 2048, paper_label="OPT-66B"),
    "llama-3-8b": ModelSpec("llama-3-8b", "llama", 4096, 14336, 32, 32, 8, 128256, 8192, rope_theta=500000.0,
                            paper_label="LLaMA-3-8B"),
    "mistral-7b": ModelSpec("mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 32768, 32768, rope_theta=1e6,
                            paper_label="Mistral-v0.3-7B"),
}

# Test-only miniatures of the same three families (CPU, seconds): dims are multiples of 32 so the same models
# would also pass cuSPARSELt's alignment checks on a GPU.
TOY_MODELS: dict[str, ModelSpec] = {
    "opt-toy": ModelSpec("opt-toy", "opt", 64, 256, 2, 4, 4, 128, 256),
    "llama-toy": ModelSpec("llama-toy", "llama", 64, 192, 2, 4, 2, 128, 256),
    "mistral-toy": ModelSpec("mistral-toy", "mistral", 64, 192, 2, 4, 2, 128, 256),
}

ALL_MODELS = {**MODELS, **TOY_MODELS}


def get_spec(name: str) -> ModelSpec:
    if name not in ALL_MODELS:
        raise ValueError(f"model={name!r} is unknown; choose one of {tuple(MODELS)} (or the test-only "
                         f"{tuple(TOY_MODELS)})")
    return ALL_MODELS[name]


def build_config(spec: ModelSpec, num_blocks: int, attention: str = "sdpa"):
    """The transformers config of ``spec`` truncated to ``num_blocks`` blocks (dropout off: timing is deterministic)."""
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention={attention!r} is unknown; choose one of {ATTENTION_IMPLEMENTATIONS}")
    if not 1 <= num_blocks <= spec.layers:
        raise ValueError(f"{spec.name}: num_blocks={num_blocks} must be in [1, {spec.layers}]")
    from transformers import LlamaConfig, MistralConfig, OPTConfig

    if spec.family == "opt":
        return OPTConfig(hidden_size=spec.hidden, ffn_dim=spec.intermediate, num_hidden_layers=num_blocks,
                         num_attention_heads=spec.heads, vocab_size=spec.vocab,
                         max_position_embeddings=spec.max_positions, word_embed_proj_dim=spec.hidden,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, attn_implementation=attention)
    common = dict(hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=num_blocks,
                  num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, vocab_size=spec.vocab,
                  max_position_embeddings=spec.max_positions, rope_theta=spec.rope_theta, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, attn_implementation=attention)
    if spec.family == "llama":
        return LlamaConfig(**common)
    if spec.family == "mistral":
        return MistralConfig(sliding_window=None, **common)
    raise ValueError(f"{spec.name}: family={spec.family!r} is not one of opt, llama, mistral")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(spec: ModelSpec, num_blocks: int, *, dtype: torch.dtype = torch.float32, device="cpu",
                attention: str = "sdpa", seed: int = 0):
    """A causal LM of ``spec`` with ``num_blocks`` blocks and random weights, created on ``device`` in ``dtype``.

    Parameters are allocated in place on the device and dtype (no fp32 CPU copy of a multi-GB model first).
    The same ``seed`` gives the same weights, so dense and sparse variants start from one model.
    """
    from transformers import AutoModelForCausalLM

    config = build_config(spec, num_blocks, attention)
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = AutoModelForCausalLM.from_config(config)
    return model.to(device=device, dtype=dtype)


# ----- sizes and the memory estimate ----------------------------------------------------------------------------

def block_linear_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear in one block, by the module's short name."""
    h, f, kv = spec.hidden, spec.intermediate, spec.kv_heads * spec.head_dim
    if spec.family == "opt":
        return {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "out_proj": (h, h), "fc1": (h, f),
                "fc2": (f, h)}
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, f),
            "up_proj": (h, f), "down_proj": (f, h)}


def param_counts(spec: ModelSpec, num_blocks: int) -> dict[str, int]:
    """Analytic parameter counts: ``sparse`` = weights `slope.paper_filter` sparsifies; ``dense`` = the rest
    (embeddings, norms, LM head, biases, block 0's q/k/v); ``largest_linear`` = elements of the biggest weight."""
    shapes = block_linear_shapes(spec)
    weights = sum(i * o for i, o in shapes.values())
    biases = sum(o for _, o in shapes.values()) if spec.family == "opt" else 0  # LLaMA/Mistral linears: no bias
    first_block_qkv = sum(i * o for n, (i, o) in shapes.items() if n in ("q_proj", "k_proj", "v_proj"))
    norms = num_blocks * 2 * spec.hidden * (2 if spec.family == "opt" else 1)
    embed = spec.vocab * spec.hidden
    if spec.family == "opt":  # learned positions (+2 offset), final LayerNorm, LM head tied to the embedding
        other = embed + (spec.max_positions + 2) * spec.hidden + 2 * spec.hidden
    else:  # untied LM head, final RMSNorm
        other = 2 * embed + spec.hidden
    sparse = num_blocks * weights - first_block_qkv
    dense = first_block_qkv + num_blocks * biases + norms + other
    return {"sparse": sparse, "dense": dense, "total": sparse + dense,
            "largest_linear": max(i * o for i, o in shapes.values())}


# Bytes of static training state per parameter: weight + gradient + two Adam moments.
STATE_BYTES = {"half": 2 + 2 + 2 + 2,      # everything in fp16/bf16 (torch AdamW keeps moments in the param dtype)
               "amp": 4 + 4 + 4 + 4}       # fp32 parameters, gradients and moments; 16-bit compute under autocast
# A compressed SLoPe weight per dense element: W and W_RCᵀ at 9/16 of 16-bit each, 16-bit gradient of the kept half,
# fp32 master + two fp32 moments of the kept half (ADAMWSparse), two masks of one byte per group of 4 (W's, W_RCᵀ's).
SLOPE_SPARSE_BYTES = 2 * 9 / 16 * 2 + 0.5 * 2 + 0.5 * (4 + 4 + 4) + 2 * 0.25


def estimate_train_bytes(spec: ModelSpec, num_blocks: int, tokens: int, precision: str = "half") -> int:
    """Conservative training footprint of the worst variant (dense, SLoPe or FST-simulated), in bytes."""
    if precision not in STATE_BYTES:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {tuple(STATE_BYTES)}")
    counts = param_counts(spec, num_blocks)
    dense_state = counts["total"] * STATE_BYTES[precision]
    slope_state = counts["sparse"] * SLOPE_SPARSE_BYTES + counts["dense"] * STATE_BYTES[precision]
    # FST (simulated) saves a bool mask and a masked weight copy per linear for its backward, and its mask search
    # scores 90 patterns per 4x4 block in fp32 (~26 bytes per element of the largest layer, transient).
    fst_extra = counts["sparse"] * 3 + counts["largest_linear"] * 26
    state = max(dense_state + fst_extra, slope_state)
    # Saved activations per token and block (16-bit): norms, q/k/v, attention output, MLP hidden states; x1.25 slack.
    activations = num_blocks * tokens * (10 * spec.hidden + 4 * spec.intermediate) * 2 * 1.25
    logits = tokens * spec.vocab * (2 + 4 + 4)  # 16-bit logits, their fp32 upcast for the loss and its gradient
    return int(state + activations + logits)


def choose_blocks(spec: ModelSpec, budget_bytes: float, tokens: int, precision: str = "half",
                  max_blocks: int | None = None) -> int:
    """The largest block count (≤ the model's depth and ``max_blocks``) whose estimate fits ``budget_bytes``."""
    limit = min(spec.layers, max_blocks or spec.layers)
    fits = [b for b in range(1, limit + 1) if estimate_train_bytes(spec, b, tokens, precision) <= budget_bytes]
    if not fits:
        need = estimate_train_bytes(spec, 1, tokens, precision) / 1e9
        raise ValueError(f"{spec.name}: even one block needs ~{need:.1f} GB at {tokens} tokens, over the budget "
                         f"of {budget_bytes / 1e9:.1f} GB; lower --batch/--seq or raise --memory-fraction")
    return fits[-1]
