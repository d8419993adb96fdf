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


def intensity(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Per-image random gamma, contrast, brightness, blur/sharpen and noise (stateless by seed)."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 8)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i], low, high)

    x = images / 255.0
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
    x = x + tf.random.stateless_normal(tf.shape(x), seeds[5]) * uniform(6, 0.0, config.noise_std)
    # Back onto the uint8 grid the deployed model is fed.
    return tf.round(tf.clip_by_value(x, 0.0, 255.0))
