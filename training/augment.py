"""Training-time augmentation aimed at the known failure mode.

Normals from a later collection get over-called: they differ in exposure, contrast,
tone curve, sharpness (different scanners / resampling; the blind test arrives at
full resolution through a reduced JPEG decode) and framing (the 224 copies are
stretched from varying aspect ratios). Each of these is randomised here so the
model cannot key on them. Everything runs on float pixels in [0, 255].
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    rotation_degrees: float = 8.0
    zoom: float = 0.12  # independent in x and y: also varies the stretch (aspect) of the copy
    translation: float = 0.06
    gamma: tuple[float, float] = (0.65, 1.5)
    contrast: tuple[float, float] = (0.65, 1.35)
    brightness: float = 20.0  # grey levels
    # Softening up to a Gaussian of this sigma (px at 224): the newest normals are softer,
    # less edge-enhanced films than the training normals, and pneumonia is "hazy".
    blur_probability: float = 0.4
    blur_sigma_max: float = 2.0
    # Unsharp masking (radius blur_sigma_max) up to this amount: edge enhancement varies too.
    sharpen_probability: float = 0.3
    sharpen_amount: float = 1.0
    noise_std: float = 4.0  # grey levels
    flip: bool = True
    # Acquisition variation (off unless a preset turns it on). Each imitates what another
    # scanner, export or later collection does to the same anatomy:
    # the whole tone curve of a random other image of the batch (histogram matching,
    # blended in by a random amount), so no grey-level distribution marks a class;
    histogram_match_probability: float = 0.0
    # a smooth spatially varying gamma (log-gamma field from a 3x3 grid of this std);
    local_gamma_probability: float = 0.0
    local_gamma_log_std: float = 0.25
    # a down/up-sampling round trip (scale per axis in [resample_min_scale, 1]);
    resample_probability: float = 0.0
    resample_min_scale: float = 0.35
    # JPEG re-encoding at a random quality;
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)
    # dark or bright border strips and burned-in marker blocks near the edges.
    border_probability: float = 0.0
    border_max_fraction: float = 0.08
    marker_probability: float = 0.0


def geometry_layers(config: AugmentConfig, seed: int) -> keras.Sequential:
    factor = config.rotation_degrees / 360.0
    augment = [
        keras.layers.RandomRotation(factor, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(height_factor=(-config.zoom, config.zoom),
                                width_factor=(-config.zoom, config.zoom),
                                fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomTranslation(config.translation, config.translation,
                                       fill_mode="reflect", seed=seed + 2),
    ]
    if config.flip:
        augment.insert(0, keras.layers.RandomFlip("horizontal", seed=seed + 3))
    return keras.Sequential(augment, name="geometry")


def _gaussian(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur, reflect-padded so borders do not darken."""
    radius = max(1, int(round(3 * sigma)))
    taps = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32) / sigma) ** 2)
    taps /= tf.reduce_sum(taps)
    channels = images.shape[-1]
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    vertical = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
    padded = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")


def histogram_match(images: tf.Tensor, strength: tf.Tensor) -> tf.Tensor:
    """Move each image's grey-level histogram towards that of the next image in the batch.

    Classic CDF matching on the uint8 grid: lut[v] = smallest target level whose CDF
    reaches the source CDF at v. `strength` (B,1,1,1) in [0, 1] blends the result in.
    """
    batch = tf.shape(images)[0]
    levels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
    flat = tf.reshape(levels, [batch, -1])
    offsets = tf.range(batch)[:, None] * 256
    counts = tf.reshape(tf.math.bincount(tf.reshape(flat + offsets, [-1]), minlength=256 * batch,
                                         maxlength=256 * batch, dtype=tf.float32), [batch, 256])
    cdf = tf.cumsum(counts, axis=1) / tf.reduce_sum(counts, axis=1, keepdims=True)
    target = tf.roll(cdf, shift=1, axis=0)
    lut = tf.minimum(tf.searchsorted(target, cdf - 1e-6, side="left"), 255)
    matched = tf.cast(tf.reshape(tf.gather(lut, flat, batch_dims=1), tf.shape(images)), tf.float32)
    return images + strength * (matched - images)


def _smooth_field(shape_like: tf.Tensor, seed: tf.Tensor, std: float, grid: int = 3) -> tf.Tensor:
    batch, height, width = tf.shape(shape_like)[0], tf.shape(shape_like)[1], tf.shape(shape_like)[2]
    coarse = tf.random.stateless_normal([batch, grid, grid, 1], seed) * std
    return tf.image.resize(coarse, [height, width], method="bicubic")


def resample_round_trip(images: tf.Tensor, seed: tf.Tensor, min_scale: float) -> tf.Tensor:
    """Down-sample (one random size per batch, per axis) and back: a softer or aliased copy."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    scales = tf.random.stateless_uniform([3], seed, min_scale, 1.0)
    size = tf.cast(tf.round(tf.cast([height, width], tf.float32) * scales[:2]), tf.int32)
    # Half the batches antialias (area-like), half do not (plain bilinear decimation aliases).
    small = tf.cond(scales[2] < (1.0 + min_scale) / 2,
                    lambda: tf.image.resize(images, size, method="bilinear", antialias=True),
                    lambda: tf.image.resize(images, size, method="bilinear"))
    return tf.image.resize(small, [height, width], method="bilinear")


def jpeg_round_trip(images: tf.Tensor, seeds: tf.Tensor, quality: tuple[int, int]) -> tf.Tensor:
    pixels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)
    encoded = tf.map_fn(
        lambda args: tf.image.stateless_random_jpeg_quality(args[0], quality[0], quality[1], args[1]),
        (pixels, seeds), fn_output_signature=tf.uint8)
    return tf.cast(encoded, tf.float32)


def borders_and_markers(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Constant strips along random edges and bright blocks (burned-in letters) near the edges."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None, None] / tf.cast(height, tf.float32)
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :, None] / tf.cast(width, tf.float32)

    def uniform(i, count, low=0.0, high=1.0):
        return tf.random.stateless_uniform([batch, 1, 1, count], seeds[i], low, high)

    # Strip widths per edge (top, bottom, left, right); each edge has a strip half the time.
    widths = uniform(0, 4, 0.0, config.border_max_fraction) * tf.cast(uniform(1, 4) < 0.5, tf.float32)
    strip = ((rows < widths[..., 0:1]) | (rows > 1.0 - widths[..., 1:2])
             | (cols < widths[..., 2:3]) | (cols > 1.0 - widths[..., 3:4]))
    shade = tf.where(uniform(2, 1) < 0.6, 0.0, 255.0)  # mostly black, sometimes white
    on = tf.cast(uniform(3, 1) < config.border_probability, tf.bool)
    images = tf.where(strip & on, shade, images)
    # One marker block in the outer band: 4-10 % of the side, bright.
    box = uniform(4, 4)
    size_y, size_x = 0.04 + 0.06 * box[..., 0:1], 0.04 + 0.06 * box[..., 1:2]
    top = tf.where(box[..., 2:3] < 0.5, 0.02 + 0.1 * box[..., 2:3], 0.8 + 0.1 * box[..., 2:3])
    left = 0.02 + 0.86 * box[..., 3:4]
    marker = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    levels = uniform(5, 2)
    marker_on = tf.cast(levels[..., 0:1] < config.marker_probability, tf.bool)
    return tf.where(marker & marker_on, 200.0 + 55.0 * levels[..., 1:2], images)


def intensity(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Per-image random tone, sharpness, resolution, compression, framing and noise (stateless by seed)."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 17)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i], low, high)

    def chance(i, probability):
        return tf.cast(uniform(i, 0.0, 1.0) < probability, tf.float32)

    if config.histogram_match_probability > 0:
        strength = chance(8, config.histogram_match_probability) * uniform(9, 0.0, 1.0)
        images = histogram_match(images, strength)
    x = images / 255.0
    if config.local_gamma_probability > 0:
        field = _smooth_field(x, seeds[10], config.local_gamma_log_std)
        x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), tf.exp(field * chance(11, config.local_gamma_probability)))
    x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), uniform(0, *config.gamma))
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * uniform(1, *config.contrast) + mean
    x = x * 255.0 + uniform(2, -config.brightness, config.brightness)
    # A softness level t in [0, 2] walks from the image through sigma/2 to sigma_max
    # blur; sharpening subtracts the widest blur. One draw picks blur, sharpen or neither.
    mild, wide = _gaussian(x, config.blur_sigma_max / 2), _gaussian(x, config.blur_sigma_max)
    choice = uniform(3, 0.0, 1.0)
    blurring = tf.cast(choice < config.blur_probability, tf.float32)
    sharpening = tf.cast(choice > 1.0 - config.sharpen_probability, tf.float32)
    level = uniform(4, 0.0, 2.0)
    softened = tf.where(level <= 1.0, x + level * (mild - x), mild + (level - 1.0) * (wide - mild))
    sharpened = x + uniform(7, 0.0, config.sharpen_amount) * (x - wide)
    x = x + blurring * (softened - x) + sharpening * (sharpened - x)
    if config.resample_probability > 0:
        resampled = resample_round_trip(x, seeds[12], config.resample_min_scale)
        x = x + chance(13, config.resample_probability) * (resampled - x)
    x = x + tf.random.stateless_normal(tf.shape(x), seeds[5]) * uniform(6, 0.0, config.noise_std)
    if config.border_probability > 0 or config.marker_probability > 0:
        x = borders_and_markers(x, config, seeds[14])
    if config.jpeg_probability > 0:
        image_seeds = tf.random.experimental.stateless_split(seeds[15], batch)
        jpeg = jpeg_round_trip(x, image_seeds, config.jpeg_quality)
        x = x + chance(16, config.jpeg_probability) * (jpeg - x)
    # Back onto the uint8 grid the deployed model is fed.
    return tf.round(tf.clip_by_value(x, 0.0, 255.0))
