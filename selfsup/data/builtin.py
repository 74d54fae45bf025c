"""`builtin:shapes`: an offline, procedurally generated 10-class image dataset as a TFDS builder.

The demo and the tests need a dataset that exists without a network and on which
self-supervised pretraining measurably beats a random encoder. Each 32x32 RGB image shows one
shape (disc, ring, square, square outline, triangle, cross, star, ellipse, crescent, heart) whose
class depends on the shape alone; position, scale (40-90% of the image), rotation, foreground
colour, a textured two-colour background (low-frequency noise, stripes or a gradient), small
distractor blobs and pixel noise all vary independently of the class. Colour statistics thus
carry no label information (they dominate a random encoder's features), while an encoder trained
for crop and colour-jitter invariance has to learn shape. Every example is a pure function of
`(seed, split, index)`, so preparations are byte-identical and chunks can render in any order.
Use it as `--config.data=builtin:shapes`, or `load_builtin("shapes", data_dir)` in Python.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
CLASS_NAMES = (
    "disc", "ring", "square", "square_outline", "triangle",
    "cross", "star", "ellipse", "crescent", "heart",
)  # fmt: skip
SPLIT_SIZES = {"train": 10_000, "test": 2_000}
SEED = 1_234

_SPLIT_IDS = {"train": 0, "test": 1}
_SUPERSAMPLE = 2  # Edges are drawn at 2x and average-pooled: anti-aliasing.
_CHUNK = 250  # Examples rendered together; the result does not depend on it.
_NOISE_GRID = 5  # Low-frequency background noise: a 5x5 grid of values, bilinearly upsampled.
_MIN_COLOUR_DISTANCE = 0.45  # In the RGB unit cube: keeps the shape visible on its background.
_MAX_BLOBS = 2


# Shape masks in the shape's own frame: (u, v) in units of its radius; every shape fits in the
# unit disc, so "scale" means the same thing for all classes.
def _disc(u, v):
    return u * u + v * v < 1.0


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.55**2)


def _square(u, v):
    return np.maximum(abs(u), abs(v)) < 0.7


def _square_outline(u, v):
    m = np.maximum(abs(u), abs(v))
    return (m < 0.7) & (m > 0.4)


def _triangle(u, v):
    # Equilateral, vertices on the unit circle: each edge is 0.5 from the centre.
    return (v > -0.5) & (v * 0.5 - u * 0.866 < 0.5) & (v * 0.5 + u * 0.866 < 0.5)


def _cross(u, v):
    a, b = abs(u), abs(v)
    return ((a < 0.27) & (b < 0.9)) | ((b < 0.27) & (a < 0.9))


def _star(u, v):
    phase = (np.arctan2(v, u) * 5 / (2 * np.pi)) % 1.0
    spike = abs(2 * phase - 1)  # 1 at the five points, 0 halfway between them.
    return np.sqrt(u * u + v * v) < 0.4 + 0.6 * spike


def _ellipse(u, v):
    return (u / 0.95) ** 2 + (v / 0.4) ** 2 < 1.0


def _crescent(u, v):
    return (u * u + v * v < 1.0) & ((u - 0.5) ** 2 + v * v > 0.8**2)


def _heart(u, v):
    x, y = 1.25 * u, 1.25 * v + 0.15
    r = x * x + y * y - 1
    return r * r * r < x * x * y * y * y  # (x^2 + y^2 - 1)^3 < x^2 y^3; ** is slow here.


_SHAPES = (
    _disc, _ring, _square, _square_outline, _triangle,
    _cross, _star, _ellipse, _crescent, _heart,
)  # fmt: skip


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A uniform RGB colour at least _MIN_COLOUR_DISTANCE from each row of `avoid`.

    Rejection is symmetric under c -> 1 - c, so foreground colours still average to mid-grey
    like backgrounds do: how much of the image a shape covers does not shift the mean colour.
    """
    while True:
        colour = rng.random(3)
        if np.all(np.sum((avoid - colour) ** 2, axis=1) > _MIN_COLOUR_DISTANCE**2):
            return colour


def _draw_parameters(seed: int, split: str, index: int) -> dict[str, np.ndarray]:
    """All random choices for one example, from its own generator (lengths in output pixels)."""
    rng = np.random.default_rng((seed, _SPLIT_IDS[split], index))
    # Uniform [0, 1) draws, mapped to ranges below; one call each is what keeps this fast.
    scale, x, y, turn, contrast, texture, texture_turn, freq, phase, noise = rng.random(10)
    radius = (0.4 + 0.5 * scale) * IMAGE_SIZE / 2  # Diameter: 40-90% of the image.
    margin = 0.9 * radius  # Shapes may touch the border but stay almost whole.
    bg_a, bg_b = rng.random((2, 3))
    bg_b = bg_a + (0.2 + 0.4 * contrast) * (bg_b - bg_a)  # Texture contrast varies.
    blobs = rng.random((_MAX_BLOBS, 7))  # Centre x, y; radius; presence; RGB.
    return {
        "centre": margin + (IMAGE_SIZE - 2 * margin) * np.array([x, y]),
        "radius": radius,
        "angle": 2 * np.pi * turn,
        "bg_a": bg_a,
        "bg_b": bg_b,
        "texture": int(3 * texture),  # Low-frequency noise, stripes or gradient.
        "texture_angle": 2 * np.pi * texture_turn,
        "stripe_freq": (1.5 + 3 * freq) / IMAGE_SIZE,  # Cycles per pixel.
        "stripe_phase": 2 * np.pi * phase,
        "noise_grid": rng.random((_NOISE_GRID, _NOISE_GRID)),
        "fg": _distinct_colour(rng, np.stack([bg_a, bg_b])),
        "blob_centre": IMAGE_SIZE * blobs[:, :2],
        "blob_radius": (1.0 + 1.2 * blobs[:, 2]) * (blobs[:, 3] < 0.5),
        "blob_colour": blobs[:, 4:],
        "pixel_noise": 0.12 * noise * (rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) - 0.5),
    }


def _bilinear_upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix that linearly interpolates n_in samples spanning the image."""
    positions = np.linspace(0, n_in - 1, n_out)
    low = np.minimum(np.floor(positions).astype(int), n_in - 2)
    frac = positions - low
    matrix = np.zeros((n_out, n_in), np.float32)
    matrix[np.arange(n_out), low] = 1 - frac
    matrix[np.arange(n_out), low + 1] = frac
    return matrix


def _per_example(values: np.ndarray) -> np.ndarray:
    """[n, ...] parameters -> float32 [n, 1, 1, k]: broadcasts against images [n, H, W, 3]."""
    return values.astype(np.float32).reshape(len(values), 1, 1, -1)


def _background(params: dict[str, np.ndarray]) -> np.ndarray:
    """Two-colour textured backgrounds [n, 32, 32, 3]; smooth, so drawn at output resolution."""
    angle = _per_example(params["texture_angle"])
    pixels = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    along = pixels[:, None] * np.cos(angle) + pixels[:, None, None] * np.sin(angle)
    upsample = _bilinear_upsample_matrix(_NOISE_GRID, IMAGE_SIZE)
    noise = (upsample @ params["noise_grid"].astype(np.float32) @ upsample.T)[..., None]
    phase = 2 * np.pi * _per_example(params["stripe_freq"]) * along
    stripes = 0.5 + 0.5 * np.sin(phase + _per_example(params["stripe_phase"]))
    low, high = along.min((1, 2), keepdims=True), along.max((1, 2), keepdims=True)
    gradient = (along - low) / (high - low)
    textures = np.stack([noise, stripes, gradient], axis=1)
    t = textures[np.arange(len(textures)), params["texture"]]
    bg_a, bg_b = _per_example(params["bg_a"]), _per_example(params["bg_b"])
    return bg_a + t * (bg_b - bg_a)


def _paint(image: np.ndarray, inside: np.ndarray, colour: np.ndarray) -> None:
    """Paints `colour` where the supersampled mask `inside` [n, sH, sW, 1] holds, in place.

    Each output pixel takes the colour in proportion to its covered subsamples: anti-aliasing.
    """
    s = _SUPERSAMPLE
    inside = inside.astype(np.float32)
    alpha = sum(inside[:, i::s, j::s] for i in range(s) for j in range(s)) / s**2
    image += alpha * (_per_example(colour) - image)


def _render(labels: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """Renders a batch from stacked parameters -> uint8 images [n, 32, 32, 3].

    float32 throughout: NumPy's float64 transcendentals are several times slower.
    """
    image = _background(params)
    fine = (np.arange(IMAGE_SIZE * _SUPERSAMPLE, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    x, y = fine[:, None], fine[:, None, None]  # Subsample centres, in output pixels.

    centre, radius = _per_example(params["centre"]), _per_example(params["radius"])
    dx, dy = x - centre[..., :1], y - centre[..., 1:]
    angle = _per_example(params["angle"])
    cos, sin = np.cos(angle) / radius, np.sin(angle) / radius
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # The shape's own frame.
    inside = np.empty(u.shape, bool)
    for label, shape in enumerate(_SHAPES):
        chosen = labels == label
        inside[chosen] = shape(u[chosen], v[chosen])
    _paint(image, inside, params["fg"])

    for blob in range(_MAX_BLOBS):
        centre = _per_example(params["blob_centre"][:, blob])
        dx, dy = x - centre[..., :1], y - centre[..., 1:]
        inside = dx * dx + dy * dy < _per_example(params["blob_radius"][:, blob]) ** 2
        _paint(image, inside, params["blob_colour"][:, blob])

    image += params["pixel_noise"]
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def generate_examples(
    split: str, start: int, stop: int, *, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Examples `start..stop-1` of a split: uint8 images [n, 32, 32, 3] and int64 labels [n].

    Labels cycle through the classes by index, so every split of a multiple of 10 is balanced.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"shapes has no split {split!r}; its splits are {list(_SPLIT_IDS)}.")
    indices = np.arange(start, stop)
    labels = indices % len(CLASS_NAMES)
    drawn = [_draw_parameters(seed, split, int(i)) for i in indices]
    stacked = {key: np.stack([d[key] for d in drawn]) for key in drawn[0]}
    return _render(labels, stacked), labels.astype(np.int64)


class ShapesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for `builtin:shapes`; see the module docstring for what the images show.

    Not registered with TFDS (a global name could collide); obtain it through `load_builtin`.
    """

    name = "shapes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "10 shape classes, 10,000 train / 2,000 test 32x32 images, seed 1234.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Everything is generated locally.
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        for start in range(0, SPLIT_SIZES[split], _CHUNK):
            stop = min(start + _CHUNK, SPLIT_SIZES[split])
            images, labels = generate_examples(split, start, stop)
            for offset, (image, label) in enumerate(zip(images, labels)):
                yield start + offset, {"image": image, "label": label}


BUILTIN_DATASETS = {"shapes": ShapesBuilder}


def load_builtin(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The prepared builder of builtin dataset `name`, generating it into `data_dir` if needed.

    `data_dir` None or "" means TFDS's default (~/tensorflow_datasets). Needs no network.
    """
    if name not in BUILTIN_DATASETS:
        raise ValueError(
            f"unknown builtin dataset {name!r}; the builtin datasets are "
            f"{sorted(BUILTIN_DATASETS)} (e.g. builtin:shapes)."
        )
    builder = BUILTIN_DATASETS[name](data_dir=data_dir or None)
    # try_download_gcs=False: never look for a pre-built copy on Google Cloud Storage.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
