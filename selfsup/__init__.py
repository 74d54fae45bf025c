"""selfsup: self-supervised visual pretraining and transfer evaluation in JAX/Flax."""
