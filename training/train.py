"""Fitting the CNN: seeded, class-weighted, augmented, resumable from its last epoch."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .architecture import PROBABILITY_LAYER, build_model
from .augment import AugmentConfig, geometry_layers, intensity
from .data import ImageSet

HEIGHT, WIDTH, CHANNELS = 224, 224, 1
AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    dropout: float = 0.3
    label_smoothing: float = 0.0
    widths: tuple[int, ...] = (16, 32, 96, 160, 256)
    val_fraction: float = 0.15
    split_seed: int = 1337  # which patients go to validation; ensemble members must share it
    seed: int = 1337  # weights, shuffling, augmentation
    # Lung crops: each edge of the crop moves by up to this share of its size, every epoch
    # anew, so the frame around the lungs never sits at one place in the input.
    box_jitter: float = 0.06
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def as_dict(self) -> dict:
        return asdict(self)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Weights that give both classes the same total weight (n / (2 * n_class))."""
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"both classes are needed to train, got counts {counts.tolist()}")
    return {label: float(len(labels) / (2 * count)) for label, count in enumerate(counts)}


def jittered_crops(images: tf.Tensor, boxes: tf.Tensor, jitter: float, seed: tf.Tensor) -> tf.Tensor:
    """Crop each image at its (left, top, right, bottom) box, every edge moved at random by
    up to `jitter` of the box's size, stretched to the image's size: the scorer's crop
    (`pneumoscan.lungs.crop_input`) with its framing varied."""
    size = tf.tile(boxes[:, 2:] - boxes[:, :2], [1, 2])
    moved = boxes + tf.random.stateless_uniform(tf.shape(boxes), seed, -jitter, jitter) * size
    moved = tf.clip_by_value(moved, 0.0, 1.0)
    left, top, right, bottom = tf.unstack(moved, axis=1)
    count = tf.shape(images)[0]
    return tf.image.crop_and_resize(images, tf.stack([top, left, bottom, right], axis=1),
                                    tf.range(count), tf.shape(images)[1:3])


def training_dataset(train: ImageSet, config: TrainConfig) -> tf.data.Dataset:
    geometry = geometry_layers(config.augment, config.seed)
    seeds = tf.data.Dataset.random(seed=config.seed).batch(2)

    def augment(batch, seed):
        images, labels, *boxes = batch
        images = tf.cast(images, tf.float32)
        seed = tf.cast(seed, tf.int32)
        if boxes:
            images = jittered_crops(images, boxes[0], config.box_jitter, tf.random.experimental.stateless_fold_in(seed, 7))
        images = geometry(images, training=True)
        return intensity(images, config.augment, seed), labels

    tensors = (train.images, train.labels.astype(np.float32))
    if train.boxes is not None:
        tensors += (train.boxes.astype(np.float32),)
    pairs = (tf.data.Dataset.from_tensor_slices(tensors)
             .shuffle(len(train), seed=config.seed, reshuffle_each_iteration=True)
             .batch(config.batch_size))
    return tf.data.Dataset.zip(pairs, seeds).map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def eval_dataset(images: ImageSet, batch_size: int) -> tf.data.Dataset:
    return (tf.data.Dataset.from_tensor_slices((images.images.astype(np.float32),
                                                images.labels.astype(np.float32)))
            .batch(batch_size).prefetch(AUTOTUNE))


def train_model(train: ImageSet, val: ImageSet, config: TrainConfig, run_dir: Path
                ) -> tuple[keras.Model, list[dict]]:
    """Train into `run_dir` (resuming there if it holds a backup); return the two-output model
    and the per-epoch history (all epochs, including those of an interrupted earlier run)."""
    keras.utils.set_random_seed(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.as_dict(), indent=2))

    model = build_model(HEIGHT, WIDTH, CHANNELS, widths=config.widths, dropout=config.dropout)
    # Training sees only the probability; the feature map output is for export.
    classifier = keras.Model(model.inputs, model.get_layer(PROBABILITY_LAYER).output)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10,
        decay_steps=max(1, config.epochs * steps_per_epoch - int(config.warmup_epochs * steps_per_epoch)),
        warmup_target=config.learning_rate, warmup_steps=int(config.warmup_epochs * steps_per_epoch),
        alpha=0.01)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    # Decay only conv/dense kernels: BN scales and biases are not what overfits.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    classifier.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="precision"),
                 keras.metrics.Recall(name="recall")])

    history_file = run_dir / "history.csv"
    if not (run_dir / "backup").exists():
        # No interrupted run to resume: start the log afresh.
        history_file.unlink(missing_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.CSVLogger(str(history_file), append=True),
    ]
    classifier.fit(training_dataset(train, config), validation_data=eval_dataset(val, 64),
                   epochs=config.epochs, class_weight=class_weights(train.labels),
                   callbacks=callbacks, verbose=1)
    return model, read_history(history_file)


def read_history(history_file: Path) -> list[dict]:
    """Per-epoch metrics; a resumed run appends, so a repeated epoch keeps its last row."""
    rows: dict[int, dict] = {}
    with history_file.open() as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = {key: float(value) for key, value in row.items()}
    return [rows[epoch] for epoch in sorted(rows)]
