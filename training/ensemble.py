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
