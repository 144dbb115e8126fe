"""tinyvit's microbenchmarks: the kernels and the model against PyTorch, in physical units.

    python -m bench all            # everything, then the targets table
    python -m bench.attention      # or one at a time: limits, attention, layernorm, vit, finetune, targets

See bench/README.md for the method and the formulas. Without CUDA every script runs a small smoke mode.
"""
