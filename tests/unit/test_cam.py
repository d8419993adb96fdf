"""Class activation maps: hand-computed values, shares, hot region and the overlay PNG."""

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from pneumoscan import cam, images, overlay
from pneumoscan.model import CamWeights


def _jpeg(size, *, colour="L", exif_orientation=None, fill=None):
    rng = np.random.default_rng(7)
    channels = () if colour == "L" else (3,)
    pixels = rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8) if fill is None else fill
    image = Image.fromarray(pixels, mode=colour)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_cam_is_feature_map_times_weights_plus_bias():
    feature_map = np.array([[[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]],
                            [[3.0, 1.0, 2.0], [0.5, 0.0, 0.0]]], dtype=np.float32)
    weights = cam.CamWeights(np.array([1.0, -2.0, 0.5], dtype=np.float32), 0.25)
    # By hand: 1-4+0+.25, 0-0+2+.25 / 3-2+1+.25, .5-0+0+.25
    expected = np.array([[-2.75, 2.25], [2.25, 0.75]], dtype=np.float32)
    np.testing.assert_allclose(cam.class_activation_map(feature_map, weights), expected)


def test_evidence_is_the_positive_part_for_the_label_given():
    activation = np.array([[-2.0, 1.0], [0.5, -0.25]], dtype=np.float32)
    np.testing.assert_allclose(cam.evidence(activation, positive=True), [[0, 1.0], [0.5, 0]])
    np.testing.assert_allclose(cam.evidence(activation, positive=False), [[2.0, 0], [0, 0.25]])


def test_weights_come_from_model_json_and_must_match_the_feature_map():
    weights = CamWeights.from_dict({"weights": [0.5, 1.5], "bias": -1})
    assert weights.weights.tolist() == [0.5, 1.5] and weights.bias == -1.0
    with pytest.raises(cam.CamUnavailable):
        CamWeights.from_dict({"note": "no weights in this cam section"})
    with pytest.raises(cam.CamUnavailable, match="does not match"):
        cam.class_activation_map(np.zeros((7, 7, 3), np.float32), weights)


def test_heat_in_the_border_and_outside_the_chest_is_measured():
    corner = np.zeros((10, 10), np.float32)
    corner[0, 0] = 1.0
    summary = cam.summarise(corner, (1000, 800))
    # Bilinear upsampling lets a little of the corner cell's heat bleed past the border.
    assert summary.border_share > 0.95 and summary.outside_chest_share > 0.99 and summary.outside_chest

    centre = np.zeros((10, 10), np.float32)
    centre[4:6, 4:6] = 1.0
    summary = cam.summarise(centre, (1000, 800))
    assert summary.border_share == pytest.approx(0.0, abs=1e-6)
    assert summary.outside_chest_share == pytest.approx(0.0, abs=1e-6) and not summary.outside_chest

    nothing = cam.summarise(np.zeros((7, 7), np.float32), (1000, 800))
    assert nothing.hot_region is None and nothing.border_share == 0.0


def test_hot_region_is_the_peak_blob_in_image_pixels():
    heat = np.zeros((10, 10), np.float32)
    heat[2, 7] = 1.0  # cell centred at 75 % across, 25 % down
    heat[8, 1] = 0.4  # a weaker, separate blob is not part of the region
    box = cam.summarise(heat, (1000, 500)).hot_region
    # Bilinear upsampling halves the cell's value half a cell from its centre,
    # so the region spans about one cell: x 70-80 %, y 20-30 % (+- one 2 % step).
    assert abs(box.x - 700) <= 20 and abs(box.x + box.width - 800) <= 20
    assert abs(box.y - 100) <= 10 and abs(box.y + box.height - 150) <= 10


def test_overlay_is_a_png_of_the_documented_size():
    decoded = images.decode(_jpeg((2000, 1500)), target_size=(224, 224))
    feature_map = np.random.default_rng(1).random((7, 7, 4), dtype=np.float32)
    weights = cam.CamWeights(np.array([1, -1, 0.5, 0.25], np.float32), -0.1)
    heat = cam.evidence(cam.class_activation_map(feature_map, weights), positive=True)
    summary = cam.summarise(heat, (decoded.width, decoded.height))
    png = overlay.overlay_png(decoded, heat, title="P = 0.800   PNEUMONIA", summary=summary)

    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    # X-ray scaled to 512 on its long side (512x384), plus the legend column and title row.
    assert picture.size == (512 + overlay.LEGEND_WIDTH, 384 + overlay.TITLE_HEIGHT) == overlay.overlay_size((2000, 1500))
    picture.load()  # decodes every row: a truncated or corrupt PNG raises here
    box = summary.hot_region
    assert 0 <= box.x < box.x + box.width <= 2000 and 0 <= box.y < box.y + box.height <= 1500


def test_hot_region_is_in_upright_pixels_when_exif_rotates_the_image():
    pixels = np.zeros((200, 300), np.uint8)  # stored landscape, shown portrait (orientation 6)
    decoded = images.decode(_jpeg((300, 200), exif_orientation=6, fill=pixels))
    weights = cam.CamWeights(np.ones(1, np.float32), 0.0)
    feature_map = np.zeros((4, 4, 1), np.float32)
    feature_map[3, 0] = 1.0  # bottom-left of the upright image
    heat = cam.evidence(cam.class_activation_map(feature_map, weights), positive=True)
    box = cam.summarise(heat, (decoded.width, decoded.height)).hot_region
    assert box.x == 0 and box.y + box.height == 300 and box.width < 100 and box.height < 150


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cam_of_a_hand_set_tflite_model_matches_the_hand_computation(tmp_path):
    """A real LiteRT model with hand-set weights, through PneumoniaModel and model.json."""
    import tensorflow as tf

    from pneumoscan.model import PneumoniaModel

    kernel = np.array([2.0, -1.0], np.float32)  # 1x1 conv, two channels, ReLU after
    conv_bias = np.array([0.0, 1.0], np.float32)
    dense, dense_bias = np.array([1.5, -0.5], np.float32), 0.1

    class HandSet(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.uint8, name="image")])
        def serve(self, image):
            pixels = tf.cast(image, tf.float32) / 255.0
            feature_map = tf.nn.relu(pixels * kernel + conv_bias)
            logit = tf.reduce_mean(feature_map, axis=[1, 2]) @ dense[:, None] + dense_bias
            return {"probability": tf.sigmoid(logit), "feature_map": feature_map}

    module = HandSet()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    model_bytes = converter.convert()
    (tmp_path / "hand.tflite").write_bytes(model_bytes)
    metadata = {"name": "hand-set", "version": "0", "file": "hand.tflite",
                "sha256": hashlib.sha256(model_bytes).hexdigest(),
                "input": {"height": 8, "width": 8, "channels": 1}, "labels": ["NORMAL", "PNEUMONIA"],
                "threshold": 0.5, "cam": {"weights": dense.tolist(), "bias": dense_bias}}
    (tmp_path / "model.json").write_text(json.dumps(metadata))

    image = np.zeros((1, 8, 8, 1), np.uint8)
    image[0, 2, 5, 0] = 255
    prediction = PneumoniaModel(tmp_path).predict(image)
    activation = cam.class_activation_map(prediction.feature_map[0], CamWeights.from_dict(metadata["cam"]))

    # By hand: a white pixel gives features (2, 0) -> 1.5*2 + 0.1 = 3.1; black gives (0, 1) -> -0.5 + 0.1.
    expected = np.full((8, 8), -0.4, np.float32)
    expected[2, 5] = 3.1
    np.testing.assert_allclose(activation, expected, atol=1e-5)
    # The map averages to the model's logit: CAM and score are the same computation.
    logit = (3.1 - 0.4 * 63) / 64
    assert prediction.probability[0] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)


def test_the_bundled_models_cam_averages_to_its_score():
    """model.json's cam weights belong to the .tflite next to it: the CAM of the int8 model
    averages to the logit of its own probability (quantisation leaves ~0.01)."""
    from image_cases import FULLRES_DIR
    from pneumoscan.model import PneumoniaModel

    model = PneumoniaModel()
    weights = model.metadata.cam
    xrays = [path for label in ("NORMAL", "PNEUMONIA") for path in sorted((FULLRES_DIR / label).glob("*.jpeg"))[:3]]
    for xray in xrays:
        pixels, _ = images.load_model_input(xray.read_bytes(), *model.input_shape)
        prediction = model.predict(pixels)
        logit = float(cam.class_activation_map(prediction.feature_map[0], weights).mean())
        assert 1 / (1 + np.exp(-logit)) == pytest.approx(float(prediction.probability[0]), abs=0.02), xray.name


def test_the_stored_heat_map_is_a_hundred_bytes_and_round_trips_within_a_level():
    rng = np.random.default_rng(7)
    heat = rng.gamma(2.0, 0.4, size=(14, 14)).astype(np.float32)
    stored = cam.encode_heat(heat)
    assert len(stored) == 2 + 14 * 14 // 2
    restored = cam.decode_heat(stored, float(heat.max()))
    assert restored.shape == (14, 14)
    assert np.abs(restored - heat).max() <= heat.max() / cam.HEAT_LEVELS / 2 + 1e-6
    peak_cell = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert restored[peak_cell] == pytest.approx(heat.max())  # the peak keeps the top level and its value


def test_an_empty_or_odd_sized_heat_map_round_trips():
    assert not cam.decode_heat(cam.encode_heat(np.zeros((3, 5), np.float32))).any()
    odd = np.arange(1, 16, dtype=np.float32).reshape(3, 5)  # 15 cells, one of each level
    assert np.allclose(cam.decode_heat(cam.encode_heat(odd), 15.0), odd)
    with pytest.raises(ValueError):
        cam.decode_heat(b"\x0e\x0e" + b"\x00" * 10)
