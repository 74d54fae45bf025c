"""selfsup: self-supervised visual pretraining and transfer evaluation in JAX/Flax."""

import os

# XLA:CPU in jaxlib 0.10 hands convolutions and matmuls to YNNPACK by default, whose convolutions
# run on one thread; XLA's own kernels use every core, so YNNPACK is turned off (measured in
# experiments/bench/RESULTS.md). XLA reads the flag when JAX
# starts its CPU backend, so it is set on import, before any selfsup module imports JAX; a value
# the user put in XLA_FLAGS wins. Other backends ignore it.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
if YNN_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN_FLAG}=".strip()


def __getattr__(name: str):
    # `selfsup.load_encoder` imports JAX, Flax and orbax on first use, so `import selfsup` stays
    # light and sets the flag above before anything starts JAX.
    if name == "load_encoder":
        from selfsup.pretrained import load_encoder

        return load_encoder
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
