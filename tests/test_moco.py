"""MoCo: InfoNCE against a float64 reference and its hand-derived gradient, the queue against a
NumPy FIFO of the global batches' keys on 1 and 8 devices, loss, gradients and key-encoder
outputs equal on 1 and 8 devices (global BatchNorm: nothing for shuffled BN to protect), and the
paper's shuffled BatchNorm as an option (`bn_groups`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from test_teacher import first_step, mesh_of, synthetic_batches, tiny_config, train

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.pretext import get_task, moco
from selfsup.train.state import model_graphdef


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def info_nce_reference(q, k, queue, temperature) -> tuple[float, float]:
    """moco/builder.py `forward` then `nn.CrossEntropyLoss` with label 0, in float64 loops:
    logits [q.k, q.queue_1, ..., q.queue_K] / T; and the share of queries ranking k first."""
    q, k, queue = (np.asarray(a, np.float64) for a in (q, k, queue))
    losses, top = [], []
    for qi, ki in zip(q, k):
        logits = np.concatenate([[qi @ ki], queue @ qi]) / temperature
        losses.append(-logits[0] + np.log(np.sum(np.exp(logits))))
        top.append(np.argmax(logits) == 0)
    return float(np.mean(losses)), float(np.mean(top))


def test_info_nce_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    q = unit(rng.normal(size=(12, 8)))
    k = unit(q + 0.7 * rng.normal(size=(12, 8)))  # Noisy positives: some rank first.
    queue = unit(rng.normal(size=(40, 8)))
    for temperature in (0.07, 0.2, 1.0):
        loss, metrics = moco.info_nce_loss(
            *(jnp.asarray(a, jnp.float32) for a in (q, k, queue)), temperature
        )
        ref_loss, ref_accuracy = info_nce_reference(q, k, queue, temperature)
        np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
        assert 0 < ref_accuracy < 1 and float(metrics["contrast_accuracy"]) == pytest.approx(
            ref_accuracy
        )


def test_info_nce_gradient_is_the_hand_derived_one():
    """dL/dq_i = (sum_j s_j c_j - k_i) / (T N), s = softmax of the logits, c = [k_i, queue]."""
    rng = np.random.default_rng(1)
    q, k, queue = (
        rng.normal(size=(6, 5)),
        unit(rng.normal(size=(6, 5))),
        unit(rng.normal(size=(9, 5))),
    )
    t = 0.2
    grad = jax.grad(lambda q: moco.info_nce_loss(q, k, queue, t)[0])(jnp.asarray(q, jnp.float32))
    expected = []
    for qi, ki in zip(q, k):
        candidates = np.concatenate([ki[None], queue])
        logits = candidates @ qi / t
        s = np.exp(logits - logits.max())
        s /= s.sum()
        expected.append((s @ candidates - ki) / (t * len(q)))
    np.testing.assert_allclose(grad, np.array(expected), rtol=1e-5, atol=1e-7)


def keys_of(state, batch, graphdef) -> np.ndarray:
    """The key encoder's embeddings of view 2, computed apart from the task's loss."""

    @jax.jit
    def embed(key_encoder, views):
        net = nnx.merge(graphdef, key_encoder["params"], key_encoder["batch_stats"])
        return net.embed(views[:, 1], train=True)[0]

    return np.asarray(embed(state.extra["key_encoder"], batch["views"]))


@pytest.mark.slow  # Compiles MoCo's step for two meshes.
def test_the_queue_is_a_fifo_of_the_global_batches_keys_on_1_and_8_devices():
    config = tiny_config("moco")  # K = 32 = two batches of 16: the third step wraps.
    batches = synthetic_batches(config, 3)
    graphdef = model_graphdef(get_task(config).build_model)
    queues = {}
    for devices in (1, 8):
        states, _ = train(config, mesh_of(devices), batches)
        fifo, pointer = np.asarray(states[0].extra["queue"]).copy(), 0
        np.testing.assert_allclose(np.linalg.norm(fifo, axis=1), 1.0, rtol=1e-6)
        for state, after, batch in zip(states, states[1:], batches):
            fifo[pointer : pointer + 16] = keys_of(state, batch, graphdef)
            pointer = (pointer + 16) % 32
            np.testing.assert_allclose(after.extra["queue"], fifo, rtol=1e-5, atol=1e-5)
            assert int(after.extra["queue_pointer"]) == pointer
        queues[devices] = fifo
    np.testing.assert_allclose(queues[1], queues[8], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # Eleven eager forward passes of the tiny ResNet: ~13 CPU-s.
def test_bn_groups_normalise_each_group_alone_and_shuffle_the_keys_across_groups():
    """`bn_groups=4`: each group of 4 images is embedded as a batch of its own from the same
    running statistics, which keep the groups' mean; keys go through a random permutation of
    the batch first and come back in its order, so a key is normalised with other images than
    its query."""
    net = get_task(tiny_config("moco")).build_model(nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(16, 16, 16, 3)), jnp.float32)
    graphdef, stats, rest = nnx.split(net, nnx.BatchStat, ...)

    def alone(batch):  # A fresh copy of the model on `batch` alone.
        copy = nnx.merge(graphdef, stats, rest)
        return np.asarray(copy.embed(batch, train=True)[0]), nnx.state(copy, nnx.BatchStat)

    embedded, _ = moco.embed_in_groups(net, images, 4)
    groups = [alone(images[i : i + 4]) for i in range(0, 16, 4)]
    np.testing.assert_allclose(embedded, np.concatenate([e for e, _ in groups]), atol=1e-6)
    mean = jax.tree.map(lambda *s: sum(s) / 4, *[s for _, s in groups])
    for a, b in zip(jax.tree.leaves(nnx.state(net, nnx.BatchStat)), jax.tree.leaves(mean)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert np.abs(embedded - alone(images)[0]).max() > 0.01  # Not the whole batch's BatchNorm.
    rng = jax.random.key(5)
    order = np.asarray(jax.random.permutation(rng, 16))
    keys = moco.shuffled_keys(nnx.merge(graphdef, stats, rest), images, 4, rng)
    expected = np.concatenate([alone(images[order[i : i + 4]])[0] for i in range(0, 16, 4)])
    np.testing.assert_allclose(keys[order], expected, atol=1e-6)
    assert not (order.reshape(4, 4) // 4 == np.arange(4)[:, None]).all()  # Groups mixed.


@pytest.mark.slow  # Compiles MoCo's step for two meshes, twice.
@pytest.mark.parametrize("bn_groups", [1, 4])
def test_loss_gradients_and_key_encoder_outputs_equal_on_1_and_8_devices(bn_groups):
    """With BatchNorm over the global batch the keys do not depend on the device count: no
    device holds statistics of its own shard for a query and its key to share. MoCo's shuffled
    BatchNorm (`bn_groups`) groups examples, not devices: the same on 1 and 8 devices."""
    options = {} if bn_groups == 1 else dict(bn_groups=bn_groups)  # 1 is the default.
    one, eight = first_step("moco", 1, **options), first_step("moco", 8, **options)
    # The queue is split over the mesh: each of 8 devices holds 32 / 8 rows.
    sharding1, sharding8 = one["shardings"]["queue"], eight["shardings"]["queue"]
    assert sharding8.spec == P(parallel.DATA_AXIS) and sharding1.spec == P(parallel.DATA_AXIS)
    dim = tiny_config("moco").moco.dim
    assert sharding8.shard_shape((32, dim)) == (4, dim)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    # Enqueued keys (rows 0-15) and the key encoder's BatchNorm statistics.
    for key in ("grads", "extra"):
        flat1, flat8 = jax.tree.leaves(one[key]), jax.tree.leaves(eight[key])
        assert len(flat1) == len(flat8) > 10
        scale = max(np.abs(a).max() for a in flat1)
        for a, b in zip(flat1, flat8):  # Rounding only, as in test_simclr.py.
            np.testing.assert_allclose(
                a, b, rtol=1e-3, atol=max(1e-4 * np.abs(a).max(), 1e-6 * scale)
            )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "queue_size",
            40,
            r"queue_size=40 is invalid: .* of config\.batch_size=16 .* e\.g\. 48\.$",
        ),
        ("queue_size", 8, r"queue_size=8 is invalid: .* a multiple of .* e\.g\. 16\.$"),
        ("queue_size", 0, r"queue_size=0 is invalid: .* a multiple of .* e\.g\. 16\.$"),
        # A float32 queue of 800M x dim keys: refused from its shape, before any allocation.
        ("queue_size", 800_000_000, r"at most 8388608 keys of dim=32 .* e\.g\. 8388608\.$"),
        ("temperature", 0.0, r"--config\.moco\.temperature to a number in \[0\.01, 10\]"),
        ("temperature", 1e-30, r"--config\.moco\.temperature to a number in \[0\.01, 10\]"),
        ("dim", -1, r"--config\.moco\.dim to an integer in \[1, 16384\]"),
        ("color_strength", -1.0, r"--config\.moco\.color_strength to a number in \[0, 1\.25\]"),
        ("bn_groups", 3, r"bn_groups=3 is invalid: .* a divisor of config\.batch_size=16 that"),
        ("bn_groups", 16, r"bn_groups=16 is invalid: .* at least 2 per group"),
    ],
)
def test_bad_settings_are_config_errors(key, value, message):
    config = tiny_config("moco")
    config.moco[key] = value
    with pytest.raises(ConfigError, match=message):
        get_task(config)
