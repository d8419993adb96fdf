"""Averaging the logits of several trained models into one GAP-head model.

mean_i(w_i . gap(F_i) + b_i) = [w_1/n, ..., w_n/n] . gap(concat F_i) + mean(b_i), so the
ensemble is itself a single-dense GAP model over the concatenated feature maps, and its
class activation maps work exactly like a single model's.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from pneumoscan.model import FlipAverage, logit_probability, probability_logit

from .architecture import FEATURE_MAP_LAYER, LOGIT_LAYER, PROBABILITY_LAYER


def average_logits(members: list[keras.Model]) -> keras.Model:
    inputs = keras.Input(members[0].inputs[0].shape[1:], name="image")
    feature_maps = []
    for index, member in enumerate(members):
        trunk = keras.Model(member.inputs, member.get_layer(FEATURE_MAP_LAYER).output,
                            name=f"member{index}")
        feature_maps.append(trunk(inputs))
    feature_map = layers.Concatenate(name=FEATURE_MAP_LAYER)(feature_maps)
    pooled = layers.GlobalAveragePooling2D(name="gap")(feature_map)
    dense = layers.Dense(1, name=LOGIT_LAYER)
    logit = dense(pooled)
    kernels, biases = zip(*(member.get_layer(LOGIT_LAYER).get_weights() for member in members))
    dense.set_weights([np.concatenate(kernels) / len(members), np.mean(biases, axis=0)])
    probability = layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    return keras.Model(inputs, {PROBABILITY_LAYER: probability, FEATURE_MAP_LAYER: feature_map},
                       name="pneumoscan_ensemble")


@keras.saving.register_keras_serializable(package="pneumoscan")
class HorizontalFlip(layers.Layer):
    """Mirror images (or feature maps) left to right."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


def flip_averaged(model: keras.Model) -> keras.Model:
    """Test-time flip averaging as one GAP-head model.

    The mirrored image's feature map is mirrored back and averaged with the direct one;
    the GAP head is linear, so the logit is the mean of the two logits and the class
    activation map stays aligned with the image.
    """
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    trunk = keras.Model(model.inputs, model.get_layer(FEATURE_MAP_LAYER).output, name="trunk")
    direct = trunk(inputs)
    mirrored = HorizontalFlip(name="unflip")(trunk(HorizontalFlip(name="flip")(inputs)))
    feature_map = layers.Average(name=FEATURE_MAP_LAYER)([direct, mirrored])
    pooled = layers.GlobalAveragePooling2D(name="gap")(feature_map)
    dense = layers.Dense(1, name=LOGIT_LAYER)
    logit = dense(pooled)
    dense.set_weights(model.get_layer(LOGIT_LAYER).get_weights())
    probability = layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    return keras.Model(inputs, {PROBABILITY_LAYER: probability, FEATURE_MAP_LAYER: feature_map},
                       name="pneumoscan_flip_averaged")


# A band holding every probability: the mirrored pass runs on every image.
EVERY_IMAGE = (0.0, 1.0)
# How much wider than needed on the fitted images the band is made: images from other
# sources disagree with their mirror images more than the ones it was fitted on.
FLIP_BAND_SLACK = 2.0


def fit_flip_band(single: np.ndarray, averaged: np.ndarray, threshold: float,
                  slack: float = FLIP_BAND_SLACK) -> tuple[FlipAverage, dict]:
    """The single-pass probabilities around `threshold` for which averaging with the mirror
    image is run: every fitted image whose label the averaging changed lies inside, `slack`
    times over in logits (and at least the median shift averaging makes, should none change)."""
    centre = float(probability_logit(np.array([threshold]))[0])
    z_single, z_averaged = probability_logit(single), probability_logit(averaged)
    shift = np.abs(z_single - z_averaged)
    changed = (single >= threshold) != (averaged >= threshold)
    reach = float(np.abs(z_single - centre)[changed].max()) if changed.any() else 0.0
    margin = slack * max(reach, float(np.median(shift)))
    # min/max: the round trip through logits may miss the threshold itself by a rounding error.
    band = (min(threshold, float(logit_probability(centre - margin))),
            max(threshold, float(logit_probability(centre + margin))))
    record = {"band": list(band), "margin_logit": round(margin, 4), "slack": slack,
              "fitted_on_images": int(len(single)), "labels_changed_by_averaging": int(changed.sum()),
              "farthest_changed_logit_distance": round(reach, 4),
              "logit_shift": {"p50": round(float(np.median(shift)), 4),
                              "p99": round(float(np.percentile(shift, 99)), 4), "max": round(float(shift.max()), 4)},
              "averaged_share_of_fit_images": float(np.mean((single >= band[0]) & (single <= band[1])))}
    note = (f"the mirror image is scored too when the single-pass probability is within {band[0]:.4f}..{band[1]:.4f}: "
            f"{slack}x the logit distance from the threshold of the farthest of {int(changed.sum())} images "
            f"(of {len(single)} validation and training images) whose label averaging changed")
    return FlipAverage(band, note=note), record
