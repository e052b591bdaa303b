"""localpref: train language models from steers (local corrections of a generation).

Modules:
    localpref.data      steer schema, loading, tokenization, divergence spans, importers
    localpref.logprobs  per-token log-probs from logits or hidden states (Triton or PyTorch)
    localpref.losses    localized preference losses, SFT and DPO baselines (pure functions)
    localpref.kernels   Triton kernels (source folder: kernels/), each beside its reference
    localpref.train     the Hydra training entry point
"""

__version__ = "0.1.0"
