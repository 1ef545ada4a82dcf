"""Hugging Face Trainer integration for compressed SLoPe layers.

The Trainer builds and steps one optimizer; compressed layers need `ADAMWSparse` beside it. Give the Trainer an
optimizer over `slope.optim.dense_parameters(model)` (a Trainer-built optimizer over all parameters would update
the 16-bit sparse values without fp32 masters, so this callback refuses it) and add the callback:

    sparse = ADAMWSparse(model, lr=args.learning_rate, weight_decay=args.weight_decay)
    dense = torch.optim.AdamW(dense_parameters(model), lr=args.learning_rate, weight_decay=args.weight_decay)
    trainer = Trainer(model, args, optimizers=(dense, scheduler), callbacks=[SparseOptimizerCallback(sparse)])

The Trainer clips gradients before ``on_pre_optimizer_step`` over ``model.parameters()``, which include the
sparse values, so one global norm covers both (keep ``max_grad_norm`` as usual). The callback copies the dense
optimizer's current learning rate and weight decay to the sparse one, steps it, and clears its gradients.
"""
from __future__ import annotations

from transformers import TrainerCallback

from .optim import ADAMWSparse


class SparseOptimizerCallback(TrainerCallback):
    def __init__(self, sparse_optimizer: ADAMWSparse):
        self.sparse_optimizer = sparse_optimizer

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        sparse = {id(p) for group in self.sparse_optimizer.param_groups for p in group["params"]}
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        if any(id(p) in sparse for group in inner.param_groups for p in group["params"]):
            raise ValueError("the Trainer's optimizer also updates the compressed layers' values; build it over "
                             "slope.optim.dense_parameters(model) and pass it with Trainer(optimizers=(opt, sched))")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            group = getattr(optimizer, "optimizer", optimizer).param_groups[0]
            self.sparse_optimizer.lr = group["lr"]
            self.sparse_optimizer.weight_decay = group.get("weight_decay", self.sparse_optimizer.weight_decay)
        self.sparse_optimizer.step()
        self.sparse_optimizer.zero_grad(set_to_none=True)
