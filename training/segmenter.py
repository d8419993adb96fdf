"""The lung-field segmenter: a small U-Net that finds the lungs, so the classifier reads them.

    python -m training.segmenter --data ../shared/data --model-dir model

Trained on the lung masks in `lung_masks/` (adult X-rays, two annotation conventions,
split by image name so an image drawn by both annotators stays on one side) and exported
int8 beside the classifier (`lungs.tflite`, model.json `lung_field`). No paediatric masks
exist to train on, so the training images are pushed towards what a paediatric X-ray of
the Kermany collection looks like: zoomed out (a child's lungs fill less of the frame,
arms and abdomen are in it), with black or bright frames, tone, blur and noise varied.
On the Kermany images themselves the check is the box's own sanity (area, size, position)
over every training image, reported beside the mask metrics.

The runtime side (mask -> box -> crop) is `pneumoscan.lungs`; this module only trains,
exports and measures.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from pneumoscan import lungs
from pneumoscan.images import load_model_input
from pneumoscan.lungs import LungFieldSpec
from pneumoscan_eval.datasets import default_data_dir

from .architecture import BN_MOMENTUM, PerImageStandardization
from .export import convert_int8

MASK_FOLDERS = ("ieee8023_v7labs", "ieee8023_generalblockchain")
MASK_OUTPUT = "mask"
AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class SegmenterConfig:
    size: int = 128
    widths: tuple[int, ...] = (8, 16, 32, 48, 64)
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 3e-3
    val_fraction: float = 0.12
    seed: int = 7
    zoom_out: float = 0.45  # up to this much smaller in the frame (child lungs in a wider frame)
    zoom_in: float = 0.10
    rotation_degrees: float = 10.0
    translation: float = 0.08


@dataclass
class MaskSet:
    images: np.ndarray  # (N, S, S, 1) uint8, decoded by the scorer's decoder
    masks: np.ndarray  # (N, S, S, 1) float32 in [0, 1]
    names: list[str]


def load_masks(mask_root: Path, size: int) -> MaskSet:
    """Every image/mask pair, stretched to size x size like the scorer stretches its input."""
    images, masks, names = [], [], []
    for folder in MASK_FOLDERS:
        with (mask_root / folder / "pairs.csv").open() as handle:
            for row in csv.DictReader(handle):
                image_path = mask_root / folder / "images" / row["file"]
                mask_path = mask_root / folder / "masks" / row["file"]
                pixels, _ = load_model_input(image_path.read_bytes(), size, size, 1)
                mask, _ = load_model_input(mask_path.read_bytes(), size, size, 1)
                images.append(pixels)
                masks.append((mask.astype(np.float32) / 255.0 > 0.5).astype(np.float32))
                names.append(row["file"])
    return MaskSet(np.stack(images), np.stack(masks), names)


def split_by_name(masks: MaskSet, val_fraction: float, seed: int) -> tuple[MaskSet, MaskSet]:
    """Hold out whole image names: the images drawn by both annotators stay on one side."""
    unique = sorted(set(masks.names))
    rng = np.random.default_rng(seed)
    held = set(np.asarray(unique)[rng.permutation(len(unique))[: round(len(unique) * val_fraction)]])
    pick = np.array([name in held for name in masks.names])

    def subset(where: np.ndarray) -> MaskSet:
        return MaskSet(masks.images[where], masks.masks[where], [n for n, w in zip(masks.names, where) if w])

    return subset(~pick), subset(pick)


def build_segmenter(size: int, widths: tuple[int, ...]) -> keras.Model:
    """U-Net: two convolutions per level, max pooling down, bilinear upsampling and skips up."""
    inputs = keras.Input((size, size, 1), name="image")
    x = PerImageStandardization(name="standardize")(inputs)

    def convs(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                              name=f"{name}_conv{i}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
            x = layers.ReLU(name=f"{name}_relu{i}")(x)
        return x

    skips = []
    for level, filters in enumerate(widths[:-1]):
        x = convs(x, filters, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = convs(x, widths[-1], "bottom")
    for level in reversed(range(len(widths) - 1)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = convs(x, widths[level], f"up{level}")
    logits = layers.Conv2D(1, 1, name="mask_logit")(x)
    mask = layers.Activation("sigmoid", name=MASK_OUTPUT)(logits)
    return keras.Model(inputs, {MASK_OUTPUT: mask}, name="pneumoscan_lungs")


def dice_loss(y_true, y_pred):
    intersection = keras.ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = keras.ops.sum(y_true, axis=(1, 2, 3)) + keras.ops.sum(y_pred, axis=(1, 2, 3))
    return 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)


def segmentation_loss(y_true, y_pred):
    return keras.losses.binary_crossentropy(y_true, y_pred, axis=-1) + dice_loss(y_true, y_pred)[:, None, None]


def _augment(config: SegmenterConfig):
    """Same geometry for image and mask (stacked as two channels), tone and frames on the image."""
    rotation = layers.RandomRotation(config.rotation_degrees / 360.0, fill_mode="constant", seed=config.seed)
    zoom = layers.RandomZoom(height_factor=(-config.zoom_in, config.zoom_out),
                             width_factor=(-config.zoom_in, config.zoom_out), fill_mode="constant", seed=config.seed + 1)
    shift = layers.RandomTranslation(config.translation, config.translation, fill_mode="constant", seed=config.seed + 2)
    flip = layers.RandomFlip("horizontal", seed=config.seed + 3)

    def apply(images, masks, seed):
        both = tf.concat([tf.cast(images, tf.float32), masks * 255.0], axis=-1)
        both = shift(zoom(rotation(flip(both, training=True), training=True), training=True), training=True)
        image, mask = both[..., :1], tf.cast(both[..., 1:] > 127.5, tf.float32)
        batch = tf.shape(image)[0]
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 6)

        def uniform(i, low, high):
            return tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i], low, high)

        # Where zoom/rotation/shift left an empty frame: black, mid grey or bright, as scanners do.
        filled = tf.reduce_max(tf.concat([image, both[..., 1:]], -1), axis=-1, keepdims=True) > 0
        image = tf.where(filled, image, uniform(0, 0.0, 1.0) ** 3 * 255.0)
        x = tf.pow(tf.clip_by_value(image / 255.0, 1e-6, 1.0), uniform(1, 0.6, 1.6))
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        x = ((x - mean) * uniform(2, 0.7, 1.3) + mean) * 255.0
        x = x + tf.random.stateless_normal(tf.shape(x), seeds[3]) * uniform(4, 0.0, 6.0)
        return tf.round(tf.clip_by_value(x, 0.0, 255.0)), mask

    return apply


def train_segmenter(train: MaskSet, val: MaskSet, config: SegmenterConfig) -> keras.Model:
    keras.utils.set_random_seed(config.seed)
    model = build_segmenter(config.size, config.widths)
    trainer = keras.Model(model.inputs, model.get_layer(MASK_OUTPUT).output)
    steps = math.ceil(len(train.names) / config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps, alpha=0.02)
    trainer.compile(optimizer=keras.optimizers.Adam(schedule), loss=segmentation_loss)
    augment = _augment(config)
    seeds = tf.data.Dataset.random(seed=config.seed).batch(2)
    pairs = (tf.data.Dataset.from_tensor_slices((train.images, train.masks))
             .shuffle(len(train.names), seed=config.seed, reshuffle_each_iteration=True)
             .batch(config.batch_size))
    data = tf.data.Dataset.zip(pairs, seeds).map(lambda pair, seed: augment(*pair, seed),
                                                 num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    val_data = tf.data.Dataset.from_tensor_slices((val.images.astype(np.float32), val.masks)).batch(32)
    trainer.fit(data, validation_data=val_data, epochs=config.epochs, verbose=2)
    return model


def mask_metrics(truth: np.ndarray, probability: np.ndarray, threshold: float) -> dict:
    """Dice and IoU of thresholded masks, and how often the box lands on the true lungs' box."""
    predicted = probability > threshold
    truth = truth > 0.5
    inter = (predicted & truth).sum(axis=(1, 2, 3))
    union = (predicted | truth).sum(axis=(1, 2, 3))
    total = predicted.sum(axis=(1, 2, 3)) + truth.sum(axis=(1, 2, 3))
    dice = 2 * inter / np.maximum(total, 1)
    box_iou = []
    for true_mask, mask in zip(truth[..., 0], probability[..., 0]):
        found = lungs.box_from_mask(mask, threshold)
        expected = lungs.box_from_mask(true_mask.astype(np.float32), 0.5)
        box_iou.append(lungs.box_iou(found, expected) if found and expected else 0.0)
    return {"n": int(len(truth)), "dice_mean": float(dice.mean()), "dice_p10": float(np.quantile(dice, 0.1)),
            "iou_mean": float((inter / np.maximum(union, 1)).mean()), "box_iou_mean": float(np.mean(box_iou)),
            "box_iou_p10": float(np.quantile(box_iou, 0.1))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.segmenter", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--model-dir", type=Path, default=Path("model"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/segmenter"))
    parser.add_argument("--epochs", type=int, default=SegmenterConfig.epochs)
    parser.add_argument("--seed", type=int, default=SegmenterConfig.seed)
    args = parser.parse_args(argv)
    config = SegmenterConfig(epochs=args.epochs, seed=args.seed)
    started = time.time()
    masks = load_masks(args.data / "lung_masks", config.size)
    train, val = split_by_name(masks, config.val_fraction, config.seed)
    print(f"{len(train.names)} training pairs, {len(val.names)} validation pairs")
    model = train_segmenter(train, val, config)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    model.save(args.run_dir / "segmenter.keras")
    # Calibrated on the images it will see: the classifier's training X-rays, stretched to its input.
    calibration = calibration_images(args.data / "chest_xray", train.images, config.size, config.seed)
    tflite = convert_int8(model, calibration, outputs={lungs.MASK_OUTPUT: MASK_OUTPUT})
    out = args.model_dir / lungs.SEGMENTER_FILE
    args.model_dir.mkdir(parents=True, exist_ok=True)
    out.write_bytes(tflite)
    spec = LungFieldSpec(file=lungs.SEGMENTER_FILE, sha256=hashlib.sha256(tflite).hexdigest(),
                         size_bytes=len(tflite), size=config.size)
    write_spec(spec, args.model_dir)
    segmenter = lungs.LungSegmenter(args.model_dir, spec)
    keras_val = model.predict(val.images.astype(np.float32), verbose=0)[MASK_OUTPUT]
    int8_val = np.stack([segmenter.mask(image) for image in val.images])[..., None]
    report = {"config": asdict(config), "train_pairs": len(train.names), "val_pairs": len(val.names),
              "val_keras": mask_metrics(val.masks, keras_val, 0.5),
              "val_int8": mask_metrics(val.masks, int8_val, 0.5),
              "sha256": hashlib.sha256(tflite).hexdigest(), "size_bytes": len(tflite),
              "seconds": round(time.time() - started, 1)}
    (args.model_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


SPEC_FILE = "lung_field.json"
REPORT_FILE = "segmenter.json"  # how it was trained and what it measured, beside the spec


def read_report(folder: Path) -> dict | None:
    path = folder / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_spec(spec: LungFieldSpec, folder: Path) -> Path:
    """The segmenter's model.json section, beside its file, for training to pick up."""
    path = folder / SPEC_FILE
    path.write_text(json.dumps(spec.as_dict(), indent=2) + "\n")
    return path


def read_spec(folder: Path) -> LungFieldSpec:
    """The spec beside a segmenter trained here, or the `lung_field` of a published model folder."""
    if (folder / SPEC_FILE).is_file():
        return LungFieldSpec.from_dict(json.loads((folder / SPEC_FILE).read_text()))
    return LungFieldSpec.from_dict(json.loads((folder / "model.json").read_text())["lung_field"])


def calibration_images(kermany_dir: Path, mask_images: np.ndarray, size: int, seed: int, count: int = 200
                       ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    files = sorted((kermany_dir / "train").glob("*/*.jpeg"))
    chosen = [files[i] for i in rng.choice(len(files), size=min(count, len(files)), replace=False)]
    kermany = np.stack([load_model_input(path.read_bytes(), size, size, 1)[0] for path in chosen])
    masked = mask_images[rng.choice(len(mask_images), size=min(count // 2, len(mask_images)), replace=False)]
    return np.concatenate([kermany, masked])


if __name__ == "__main__":
    main()
