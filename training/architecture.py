"""The CNN: uint8-valued pixels in, P(pneumonia) and the last feature map out.

Per-image standardisation is the first layer, so exposure and contrast differences
between collections (the failure mode we build against) are removed before any
learned weight sees them, and the Lambda feeds raw uint8 pixels.
"""

from __future__ import annotations

import keras
from keras import layers

FEATURE_MAP_LAYER = "feature_map"
LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"
# The pneumonia subtype head: P(viral | pneumonia) from the same pooled features.
SUBTYPE_LOGIT_LAYER = "subtype_logit"
SUBTYPE_LAYER = "subtype"
# Keras' default 0.99 lags far behind on a ~140-step epoch: weight decay keeps shrinking
# the conv weights (BN makes their scale free), the running variance trails the real
# one, and in inference mode activations fade layer by layer into a constant output.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="pneumoscan")
class PerImageStandardization(layers.Layer):
    """(x - mean) / std over each image's pixels, like tf.image.per_image_standardization."""

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        mean = keras.ops.mean(x, axis=(1, 2, 3), keepdims=True)
        variance = keras.ops.mean(keras.ops.square(x - mean), axis=(1, 2, 3), keepdims=True)
        # Floor of 1 grey level keeps blank images finite.
        return (x - mean) * keras.ops.rsqrt(keras.ops.maximum(variance, 1.0))


def _conv_block(x, filters: int, *, separable: bool, name: str, output_name: str | None = None):
    for i in (1, 2):
        if separable:
            x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                       depthwise_initializer="he_normal",
                                       pointwise_initializer="he_normal", name=f"{name}_sep{i}")(x)
        else:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                              name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=output_name if i == 2 and output_name else f"{name}_relu{i}")(x)
    return x


def build_model(height: int = 224, width: int = 224, channels: int = 1, *,
                widths: tuple[int, ...] = (32, 64, 128, 192, 256), dropout: float = 0.3,
                subtype_head: bool = False) -> keras.Model:
    """Stem at stride 2, five two-conv blocks, 2x2 pooling between them, GAP, one dense unit.

    He initialisation keeps activation variance through the ReLUs; weight decay is the
    optimizer's (AdamW). The feature map of the last block (14x14 for 224 input) is a
    second output; the dense layer's weights turn it into a class activation map.
    With `subtype_head`, a second dense unit on the same pooled features gives P(viral |
    pneumonia) as a third output: trained jointly, so the trunk learns what tells the two
    apart, yet it stays a linear read of the pooled feature map, which the scorer computes
    from the exported feature map without a third graph output.
    """
    inputs = keras.Input((height, width, channels), name="image")
    x = PerImageStandardization(name="standardize")(inputs)
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name="stem")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for index, filters in enumerate(widths):
        name = f"block{index + 1}"
        last = index == len(widths) - 1
        x = _conv_block(x, filters, separable=index >= 2, name=name,
                        output_name=FEATURE_MAP_LAYER if last else None)
        if index < len(widths) - 2:
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    feature_map = x
    pooled = layers.GlobalAveragePooling2D(name="gap")(feature_map)
    pooled = layers.Dropout(dropout, name="dropout")(pooled)
    logit = layers.Dense(1, name=LOGIT_LAYER)(pooled)
    probability = layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    outputs = {PROBABILITY_LAYER: probability, FEATURE_MAP_LAYER: feature_map}
    if subtype_head:
        subtype_logit = layers.Dense(1, name=SUBTYPE_LOGIT_LAYER)(pooled)
        outputs[SUBTYPE_LAYER] = layers.Activation("sigmoid", name=SUBTYPE_LAYER)(subtype_logit)
    return keras.Model(inputs, outputs, name="pneumoscan_cnn")


def detector(model: keras.Model) -> keras.Model:
    """The exported contract's two outputs (probability, feature map) of a model with or
    without the subtype head; the layers are shared, not copied."""
    return keras.Model(model.inputs, {PROBABILITY_LAYER: model.get_layer(PROBABILITY_LAYER).output,
                                      FEATURE_MAP_LAYER: model.get_layer(FEATURE_MAP_LAYER).output},
                       name=model.name)


def subtype_dense(model: keras.Model) -> keras.layers.Dense | None:
    """The subtype head's dense layer, None for a model trained without it."""
    try:
        return model.get_layer(SUBTYPE_LOGIT_LAYER)
    except ValueError:
        return None
