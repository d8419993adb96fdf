"""CI smoke test of the whole training pipeline: 1 epoch on ~40 images, export, load with LiteRT."""

import json

import numpy as np
import pytest

from model_graph import assert_fast_layout
from pneumoscan_eval import metrics
from pneumoscan_eval.datasets import FULLRES_SET, TRAINING_SET, default_data_dir
from pneumoscan.images import load_model_input
from pneumoscan.model import PneumoniaModel

DATA = default_data_dir()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / TRAINING_SET).is_dir(), reason="needs the shared data folder")]


def _history(run_dir):
    from training.train import read_history

    return read_history(run_dir / "history.csv")[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from training.pipeline import RunOptions, run
    from training.train import TrainConfig

    root = tmp_path_factory.mktemp("smoke")
    options = RunOptions(data_dir=DATA / TRAINING_SET, model_dir=root / "model", run_dir=root / "run",
                         limit_per_class=10, enforce_parity=False, version="0.0.0-smoke",
                         flip_average=True)
    result = run(TrainConfig(epochs=1, batch_size=8), options)
    return options, result


def test_model_json_follows_the_contract(smoke_run):
    options, _ = smoke_run
    metadata = json.loads((options.model_dir / "model.json").read_text())
    assert metadata["name"] == "pneumoscan-cnn" and metadata["version"] == "0.0.0-smoke"
    assert metadata["input"] == {"height": 224, "width": 224, "channels": 1, "colour": "L",
                                 "dtype": "uint8", "resize": "bilinear", "aspect": "stretch",
                                 "decode": "pneumoscan.images"}
    assert metadata["labels"] == ["NORMAL", "PNEUMONIA"]
    assert 0.0 < metadata["threshold"] < 1.0 and metadata["threshold_rule"]
    low, high = metadata["flip_average"]["band"]
    assert low <= metadata["threshold"] <= high
    flip = metadata["metrics"]["flip_average"]
    assert flip["val"]["label_agreement_with_every_image_averaged"] == 1.0
    assert flip["fitted_on_images"] == 20 + 20  # validation + the training sample (all 20 here)
    assert len(metadata["cam"]["weights"]) == 256
    assert metadata["training"]["train"]["images"] == {"NORMAL": 10, "PNEUMONIA": 10}
    assert (options.model_dir / metadata["file"]).stat().st_size <= 1_000_000
    assert_fast_layout(options.model_dir / metadata["file"])
    for name in ("roc", "pr", "confusion", "calibration", "training_curves"):
        assert (options.model_dir / "report" / f"{name}.png").stat().st_size > 1000
    assert json.loads((options.model_dir / "report" / "metrics.json").read_text())["history"]
    assert "Not a medical device" in (options.model_dir / "MODEL_CARD.md").read_text()
    assert (options.model_dir / "reference" / "pneumoscan_float.keras").is_file()
    assert (options.model_dir / "reference" / "pneumoscan_float32.tflite").is_file()


def test_exported_model_scores_a_full_resolution_xray(smoke_run):
    options, _ = smoke_run
    model = PneumoniaModel(options.model_dir)
    path = sorted((DATA / FULLRES_SET / "PNEUMONIA").iterdir())[0]
    pixels, decoded = load_model_input(path.read_bytes(), *model.input_shape)
    prediction = model.predict(pixels)
    assert min(decoded.width, decoded.height) > 2 * 224  # a real original, not a 224 copy
    assert prediction.probability.dtype == np.float32 and 0.0 <= prediction.probability[0] <= 1.0
    assert prediction.feature_map.shape == (1, 14, 14, 256)
    assert model.label(prediction.probability[0]) in ("NORMAL", "PNEUMONIA")


def test_recorded_parity_matches_a_rescoring(smoke_run):
    """The parity numbers in model.json are what LiteRT gives on the val images."""
    from training.data import dataset_files, load_images
    from training.pipeline import _limit

    options, result = smoke_run
    metadata = result["metadata"]
    split_seed = metadata["training"]["config"]["split_seed"]
    _, val_files = dataset_files(options.data_dir, 0.15, split_seed)
    val = load_images(_limit(val_files, 10, split_seed), 224, 224, 1)
    scores = PneumoniaModel(options.model_dir).predict(val.images).probability
    parity = metadata["metrics"]["parity"]
    assert metrics.roc_auc(val.labels, scores) == pytest.approx(parity["int8_auc"])
    assert metadata["metrics"]["val"]["n"] == len(val) == 20


def test_parity_gate():
    from training.pipeline import check_parity

    labels = np.array([0, 0, 0, 1, 1, 1])
    keras_scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert check_parity(labels, keras_scores, keras_scores + 0.001, 0.5)["passed"]
    swapped = np.array([0.1, 0.2, 0.8, 0.3, 0.7, 0.9])
    result = check_parity(labels, keras_scores, swapped, 0.5)
    assert not result["passed"] and result["label_agreement"] == pytest.approx(4 / 6)


def test_lung_crop_run_ships_its_segmenter_and_scores_its_patient_block(tmp_path):
    """The shipped recipe in small: the bundled segmenter crops, the block is held out and scored."""
    from pneumoscan.model import default_model_dir
    from training.pipeline import RunOptions, run
    from training.train import TrainConfig

    bundled = default_model_dir()
    if not (bundled / "lungs.tflite").is_file():
        pytest.skip(f"no bundled lung segmenter in {bundled}")
    options = RunOptions(data_dir=DATA / TRAINING_SET, model_dir=tmp_path / "model", run_dir=tmp_path / "run",
                         limit_per_class=8, enforce_parity=False, version="0.0.0-lungs", reference_models=False,
                         segmenter_dir=bundled, hold_out_block=0.15)
    metadata = run(TrainConfig(epochs=1, batch_size=8, subtype_weight=1.5), options)["metadata"]
    assert metadata["lung_field"]["file"] == "lungs.tflite"
    # The subtype unit trained beside the detector is recorded; the export keeps two outputs.
    unit = metadata["training"]["subtype_head"]
    assert len(unit["weights"]) == TrainConfig().widths[-1] and unit["loss_weight"] == 1.5
    assert set(metadata["outputs"]) == {"probability", "feature_map"}
    assert {"subtype_auc", "val_subtype_auc", "auc", "val_auc"} <= set(_history(options.run_dir))
    assert (options.model_dir / "lungs.tflite").read_bytes() == (bundled / "lungs.tflite").read_bytes()
    block = metadata["metrics"]["patient_block_hold_out"]
    assert block["n"] == 16 and block["fraction"] == 0.15
    assert set(metadata["training"]["lung_field"]) >= {"train", "val", "block"}
    model = PneumoniaModel(options.model_dir)
    image = next((DATA / TRAINING_SET / "val" / "NORMAL").glob("*.jpeg"))
    pixels, _ = load_model_input(image.read_bytes(), 224, 224, 1)
    assert len(model.predict(pixels).lung_fields) == 1
