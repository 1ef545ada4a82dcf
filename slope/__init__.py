"""SLoPe: double-pruned N:M sparse pretraining plus lazy low-rank adapters (arXiv 2405.16325).

`import slope` needs only torch. Main entry points:

    slope.prune_model(model, compress=False, tiling=True, add_lora=False, lora_rank=0, merge_lora=False,
                      backend="auto", *, sparsity="2:4", filter_fn=None, method="slope")
    slope.add_lora(model, "1.56%")       # lazy adapters, any step; slope.lora_parameters(model) for their optimizer
    slope.densify_model(model)           # back to plain nn.Linear / Conv1D, same function
    slope.wanda_prune(model, batches)    # one-shot Wanda baseline
    slope.prepare_inference(model)       # compressed inference layers: merged adapters, tiling (GPU)
"""
from .backends import BACKENDS, BackendUnavailableError, resolve_backend
from .baselines import FSTLinear, SRSTELinear
from .inference import SLoPeInferenceLinear, prepare_inference
from .linear import SLoPeLinear, SparseLinearBase
from .lora import add_lora, lora_parameters, merge_lora, resolve_rank, sparse_layers
from .masks import (assert_nm_sparse, double_prune_mask, double_pruned_density, is_nm_sparse, nm_mask,
                    parse_sparsity, row_mask, transposable_nm_mask)
from .prune import block_index, densify_model, paper_filter, prune_model, split_blocks
from .wanda import wanda_prune
from . import optim  # `slope.optim.ADAMWSparse` etc. after a plain `import slope` (the README's usage)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "FSTLinear", "SLoPeInferenceLinear", "SLoPeLinear", "SRSTELinear", "SparseLinearBase",
    "add_lora", "assert_nm_sparse", "block_index", "densify_model", "double_prune_mask", "double_pruned_density",
    "is_nm_sparse", "lora_parameters", "merge_lora", "nm_mask", "paper_filter", "parse_sparsity", "prepare_inference", "prune_model",
    "resolve_backend", "resolve_rank", "row_mask", "sparse_layers", "split_blocks", "transposable_nm_mask",
    "optim", "wanda_prune",
]
