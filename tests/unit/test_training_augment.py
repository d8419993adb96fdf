"""Acquisition augmentations: each does what it imitates, on small synthetic batches."""

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from training.augment import AugmentConfig, borders_and_markers, histogram_match, intensity, resample_round_trip


def _batch(seed=0, count=4, size=64):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None] * np.linspace(0.5, 1, size)[:, None, None]
    gains = rng.uniform(0.3, 1.0, (count, 1, 1, 1))
    return tf.constant(np.round(255 * ramp[None] ** rng.uniform(0.5, 2, (count, 1, 1, 1)) * gains),
                       tf.float32)


def test_full_histogram_match_takes_the_next_images_grey_levels():
    images = _batch()
    matched = histogram_match(images, tf.ones([4, 1, 1, 1])).numpy()
    source = images.numpy()
    for index in range(4):
        target = source[index - 1]  # the batch rolled by one
        # The matched image has the target's grey-level distribution ...
        for q in (10, 50, 90):
            assert np.percentile(matched[index], q) == pytest.approx(np.percentile(target, q), abs=3)
        # ... and keeps its own order of pixels (a monotonic tone curve).
        order = np.argsort(source[index].ravel(), kind="stable")
        assert np.all(np.diff(matched[index].ravel()[order]) >= 0)
    untouched = histogram_match(images, tf.zeros([4, 1, 1, 1])).numpy()
    np.testing.assert_array_equal(untouched, source)


def test_resampling_round_trip_keeps_size_and_softens():
    rng = np.random.default_rng(1)
    noise = tf.constant(rng.uniform(0, 255, (2, 64, 64, 1)), tf.float32)
    out = resample_round_trip(noise, tf.constant([3, 4]), 0.35).numpy()
    assert out.shape == (2, 64, 64, 1)
    assert np.abs(np.diff(out, axis=2)).mean() < np.abs(np.diff(noise.numpy(), axis=2)).mean()


def test_borders_and_markers_only_touch_the_edges_and_are_off_at_probability_zero():
    images = tf.fill([64, 64, 64, 1], 100.0)
    config = replace(AugmentConfig(), border_probability=1.0, marker_probability=1.0)
    out = borders_and_markers(images, config, tf.constant([5, 6])).numpy()
    changed = out != 100.0
    assert changed.any(axis=(1, 2, 3)).all()
    # Strips reach at most 8 % in, markers lie in the outer 12 % top/bottom band: the centre stays.
    assert not changed[:, 13:50, 8:56].any()
    off = borders_and_markers(images, AugmentConfig(), tf.constant([5, 6])).numpy()
    np.testing.assert_array_equal(off, images.numpy())


def test_intensity_with_acquisition_augmentations_stays_on_the_uint8_grid():
    config = replace(AugmentConfig(), histogram_match_probability=1.0, local_gamma_probability=1.0,
                     resample_probability=1.0, jpeg_probability=1.0, border_probability=1.0,
                     marker_probability=1.0)
    images = _batch(size=224)
    first = intensity(images, config, tf.constant([1, 2])).numpy()
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, np.round(first))
    np.testing.assert_array_equal(first, intensity(images, config, tf.constant([1, 2])).numpy())
    assert not np.array_equal(first, intensity(images, config, tf.constant([1, 3])).numpy())
