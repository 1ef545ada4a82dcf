"""Named linear-layer shape sets (d_in, d_out), with their source."""

# MLP projections of the models in the paper's speed tables (Hugging Face configs: hidden -> intermediate).
MLP_SHAPES = {
    "opt-13b.fc1": (5120, 20480),       # OPT-13B: hidden 5120, ffn 20480
    "opt-13b.fc2": (20480, 5120),
    "llama-3-8b.up": (4096, 14336),     # LLaMA-3-8B: hidden 4096, intermediate 14336 (gate/up share the shape)
    "llama-3-8b.down": (14336, 4096),
}
