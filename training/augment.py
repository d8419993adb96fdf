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
    gamma: tuple[float, float] = (0.7, 1.45)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 20.0  # grey levels
    blur_probability: float = 0.3  # mimics the softer full-resolution downscale
    sharpen_probability: float = 0.2
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


def _blur(images: tf.Tensor) -> tf.Tensor:
    kernel = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.tensordot(kernel, kernel, axes=0)[:, :, None, None]
    channels = images.shape[-1]
    kernel = tf.tile(kernel, [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")


def intensity(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Per-image random gamma, contrast, brightness, blur/sharpen and noise (stateless by seed)."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 7)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i], low, high)

    x = images / 255.0
    x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), uniform(0, *config.gamma))
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * uniform(1, *config.contrast) + mean
    x = x * 255.0 + uniform(2, -config.brightness, config.brightness)
    blurred = _blur(x)
    choice = uniform(3, 0.0, 1.0)
    blur_amount = tf.cast(choice < config.blur_probability, tf.float32)
    sharpen_amount = tf.cast(choice > 1.0 - config.sharpen_probability, tf.float32)
    # Unsharp mask for sharpening: x + a * (x - blur(x)).
    x = x + blur_amount * (blurred - x) + sharpen_amount * uniform(4, 0.3, 1.0) * (x - blurred)
    x = x + tf.random.stateless_normal(tf.shape(x), seeds[5]) * uniform(6, 0.0, config.noise_std)
    # Back onto the uint8 grid the deployed model is fed.
    return tf.round(tf.clip_by_value(x, 0.0, 255.0))
