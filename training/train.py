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

from .architecture import PROBABILITY_LAYER, SUBTYPE_LAYER, build_model
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
    # The subtype head's share of the loss (bacterial or viral, on the pneumonias whose file
    # names say which); 0 trains the detector alone.
    subtype_weight: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def as_dict(self) -> dict:
        return asdict(self)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Weights that give both classes the same total weight (n / (2 * n_class))."""
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"both classes are needed to train, got counts {counts.tolist()}")
    return {label: float(len(labels) / (2 * count)) for label, count in enumerate(counts)}


def subtype_weights(labels: np.ndarray, subtypes: np.ndarray) -> np.ndarray:
    """Per-image weights of the subtype loss: the two subtypes the same total weight, zero for
    every image without one (normals, pneumonias of unknown subtype)."""
    known = (labels == 1) & (subtypes >= 0)
    counts = np.bincount(subtypes[known], minlength=2)
    if (counts == 0).any():
        raise ValueError(f"both subtypes are needed to train the subtype head, got counts {counts.tolist()}")
    weights = np.zeros(len(labels), np.float32)
    weights[known] = known.sum() / (2 * counts[subtypes[known]])
    return weights


def _targets(images: ImageSet, config: TrainConfig, *, balanced: bool) -> tuple:
    """(labels, sample weights) as fit reads them: plain labels for the detector alone; with
    the subtype head one target and one weight per output, the detection's class weights
    (`balanced`: for training, as class_weight gives them alone) as sample weights, since fit
    takes no class_weight for two outputs."""
    labels = images.labels.astype(np.float32)
    if not config.subtype_weight:
        return (labels,)
    balance = class_weights(images.labels) if balanced else {0: 1.0, 1: 1.0}
    detection = np.array([balance[label] for label in images.labels], np.float32)
    subtype = np.maximum(images.subtypes, 0).astype(np.float32)
    return ({PROBABILITY_LAYER: labels, SUBTYPE_LAYER: subtype},
            {PROBABILITY_LAYER: detection, SUBTYPE_LAYER: subtype_weights(images.labels, images.subtypes)})


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
        images, targets, boxes = batch
        images = tf.cast(images, tf.float32)
        seed = tf.cast(seed, tf.int32)
        if train.boxes is not None:
            images = jittered_crops(images, boxes, config.box_jitter, tf.random.experimental.stateless_fold_in(seed, 7))
        images = geometry(images, training=True)
        return (intensity(images, config.augment, seed), *targets)

    # Without crops the boxes are a placeholder the map ignores (one structure either way).
    boxes = train.boxes if train.boxes is not None else np.zeros((len(train), 4))
    tensors = (train.images, _targets(train, config, balanced=True), boxes.astype(np.float32))
    pairs = (tf.data.Dataset.from_tensor_slices(tensors)
             .shuffle(len(train), seed=config.seed, reshuffle_each_iteration=True)
             .batch(config.batch_size))
    return tf.data.Dataset.zip(pairs, seeds).map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def eval_dataset(images: ImageSet, batch_size: int, config: TrainConfig) -> tf.data.Dataset:
    return (tf.data.Dataset.from_tensor_slices((images.images.astype(np.float32), *_targets(images, config, balanced=False)))
            .batch(batch_size).prefetch(AUTOTUNE))


def train_model(train: ImageSet, val: ImageSet, config: TrainConfig, run_dir: Path
                ) -> tuple[keras.Model, list[dict]]:
    """Train into `run_dir` (resuming there if it holds a backup); return the two-output model
    and the per-epoch history (all epochs, including those of an interrupted earlier run)."""
    keras.utils.set_random_seed(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.as_dict(), indent=2))

    model = build_model(HEIGHT, WIDTH, CHANNELS, widths=config.widths, dropout=config.dropout,
                        subtype_head=bool(config.subtype_weight))
    if config.subtype_weight:
        # Training sees the probabilities; the feature map output is for export.
        classifier = keras.Model(model.inputs, {name: model.get_layer(name).output
                                                for name in (PROBABILITY_LAYER, SUBTYPE_LAYER)})
    else:
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
    detection_metrics = [keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="precision"),
                         keras.metrics.Recall(name="recall")]
    loss = keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing)
    if config.subtype_weight:
        # The subtype's AUC is a weighted metric: weight zero drops the images without a
        # subtype, and one weight for every image of a subtype leaves an AUC unchanged. The
        # detection's metrics stay unweighted, as they are without the head.
        classifier.compile(
            optimizer=optimizer,
            loss={PROBABILITY_LAYER: loss, SUBTYPE_LAYER: keras.losses.BinaryCrossentropy()},
            loss_weights={PROBABILITY_LAYER: 1.0, SUBTYPE_LAYER: config.subtype_weight},
            metrics={PROBABILITY_LAYER: detection_metrics, SUBTYPE_LAYER: []},
            weighted_metrics={PROBABILITY_LAYER: [], SUBTYPE_LAYER: [keras.metrics.AUC(name="auc")]})
    else:
        classifier.compile(optimizer=optimizer, loss=loss, metrics=detection_metrics)

    history_file = run_dir / "history.csv"
    if not (run_dir / "backup").exists():
        # No interrupted run to resume: start the log afresh.
        history_file.unlink(missing_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.CSVLogger(str(history_file), append=True),
    ]
    classifier.fit(training_dataset(train, config), validation_data=eval_dataset(val, 64, config),
                   epochs=config.epochs,
                   class_weight=None if config.subtype_weight else class_weights(train.labels),
                   callbacks=callbacks, verbose=1)
    return model, read_history(history_file)


def _history_name(key: str) -> str:
    """The detector's metrics under their one-output names (auc, val_auc, ...) in a run with the
    subtype head too, where Keras prefixes them with the output; its loss is `detection_loss`
    beside the total `loss`; the subtype's keep their prefix (subtype_auc, val_subtype_loss)."""
    return key.replace(f"{PROBABILITY_LAYER}_loss", "detection_loss").replace(f"{PROBABILITY_LAYER}_", "")


def read_history(history_file: Path) -> list[dict]:
    """Per-epoch metrics; a resumed run appends, so a repeated epoch keeps its last row."""
    rows: dict[int, dict] = {}
    with history_file.open() as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = {_history_name(key): float(value) for key, value in row.items()}
    return [rows[epoch] for epoch in sorted(rows)]
