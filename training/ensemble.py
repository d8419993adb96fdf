"""Averaging the logits of several trained models into one GAP-head model.

mean_i(w_i . gap(F_i) + b_i) = [w_1/n, ..., w_n/n] . gap(concat F_i) + mean(b_i), so the
ensemble is itself a single-dense GAP model over the concatenated feature maps, and its
class activation maps work exactly like a single model's.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

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
