"""The robustness check: the geometry of each frame variant, the figures per variant, and a run
end to end with a scorer that reads only the frame."""

import csv
import io
import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from image_cases import DATA_DIR, copy_data_subset
from pneumoscan.images import ImageRejected
from training import robustness
from training.robustness import Case, Outcome


def gradient(height=100, width=200) -> np.ndarray:
    """Every pixel distinct enough to see where it went: value = (row + 2 * column) mod 251 + 1."""
    rows, cols = np.mgrid[:height, :width]
    return ((rows + 2 * cols) % 251 + 1).astype(np.uint8)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_frame_occlusion_blacks_out_the_sides_and_the_top_only():
    pixels = gradient()
    out = robustness.occlude_frame(pixels, rng())
    assert out.shape == pixels.shape
    assert not out[:10].any() and not out[:, :24].any() and not out[:, 176:].any()
    np.testing.assert_array_equal(out[10:, 24:176], pixels[10:, 24:176])  # the bottom is kept
    assert pixels.min() > 0  # the input is untouched


def test_frame_crop_keeps_exactly_what_occlusion_keeps():
    pixels = gradient()
    cropped = robustness.crop_frame(pixels, rng())
    assert cropped.shape == (90, 152)
    np.testing.assert_array_equal(cropped, pixels[10:, 24:176])


def test_zoom_out_centres_a_smaller_copy_padded_with_black_or_its_edges():
    pixels = np.full((100, 200), 90, np.uint8)
    black = robustness.zoom_out(pixels, rng(), fill="black")
    assert black.shape == pixels.shape
    assert (black[10:90, 20:180] == 90).all()
    assert not black[:10].any() and not black[90:].any() and not black[:, :20].any() and not black[:, 180:].any()
    assert (robustness.zoom_out(pixels, rng(), fill="edge") == 90).all()

    edge = robustness.zoom_out(gradient(), rng(), fill="edge")
    np.testing.assert_array_equal(edge[:10, 20:180], np.repeat(edge[10:11, 20:180], 10, axis=0))
    np.testing.assert_array_equal(edge[:, :20], np.repeat(edge[:, 20:21], 20, axis=1))
    with pytest.raises(ValueError, match="fill"):
        robustness.zoom_out(pixels, rng(), fill="grey")


def test_zoom_out_keeps_colour_channels():
    pixels = np.full((50, 60, 3), 70, np.uint8)
    assert robustness.zoom_out(pixels, rng(), fill="black").shape == (50, 60, 3)
    assert robustness.zoom_out(pixels, rng(), fill="edge").shape == (50, 60, 3)


def test_zoom_in_is_the_central_85_percent():
    pixels = gradient()
    out = robustness.zoom_in(pixels, rng())
    assert out.shape == (85, 170)
    np.testing.assert_array_equal(out, pixels[7:92, 15:185])


def test_shift_moves_the_content_by_8_percent_and_fills_black():
    pixels = gradient()
    seen = set()
    for seed in range(12):
        out = robustness.shift(pixels, rng(seed))
        assert out.shape == pixels.shape
        # Find the direction from where the content landed: 8 rows and 16 columns either way.
        matches = [(dy, dx) for dy in (8, -8) for dx in (16, -16)
                   if np.array_equal(out[max(dy, 0):100 + min(dy, 0), max(dx, 0):200 + min(dx, 0)],
                                     pixels[max(-dy, 0):100 + min(-dy, 0), max(-dx, 0):200 + min(-dx, 0)])]
        assert len(matches) == 1
        (dy, dx), = matches
        seen.add((dy, dx))
        uncovered = np.ones_like(pixels, bool)
        uncovered[max(dy, 0):100 + min(dy, 0), max(dx, 0):200 + min(dx, 0)] = False
        assert not out[uncovered].any()
    assert len(seen) > 1  # the direction is drawn, not fixed


def test_border_strips_are_white_along_every_edge():
    pixels = gradient()
    out = robustness.border_strips(pixels, rng())
    assert (out[:6] == 255).all() and (out[94:] == 255).all()
    assert (out[:, :12] == 255).all() and (out[:, 188:] == 255).all()
    np.testing.assert_array_equal(out[6:94, 12:188], pixels[6:94, 12:188])


def test_markers_are_bright_stay_in_the_corners_and_repeat_with_the_seed():
    pixels = np.full((300, 400), 60, np.uint8)
    out = robustness.paste_markers(pixels, rng(3))
    np.testing.assert_array_equal(out, robustness.paste_markers(pixels, rng(3)))
    changed = out != pixels
    assert (out[changed] >= 220).all()
    assert changed[:60].any() and changed[240:].any()  # a letter at the top, a ruler at the bottom
    assert not changed[60:240].any()  # nothing between them
    _, cols = np.nonzero(changed)
    # Every marked pixel is near the left or right edge, never in the middle of the width.
    assert ((cols < 0.3 * 400) | (cols >= 0.7 * 400)).all()
    assert len({robustness.paste_markers(pixels, rng(seed)).tobytes() for seed in range(5)}) == 5


def test_markers_draw_both_letters_and_both_corners_over_many_images():
    pixels = np.full((224, 224), 60, np.uint8)
    top_left, top_right = 0, 0
    for seed in range(20):
        changed = robustness.paste_markers(pixels, rng(seed))[:40] != 60
        top_left += changed[:, :112].any()
        top_right += changed[:, 112:].any()
    assert top_left and top_right


def test_each_image_has_its_own_reproducible_variant_generator():
    first = robustness.variant_rng(1, "chest_xray/train/NORMAL/a.jpeg", "markers").random()
    assert first == robustness.variant_rng(1, "other/folder/a.jpeg", "markers").random()
    assert first != robustness.variant_rng(1, "b.jpeg", "markers").random()
    assert first != robustness.variant_rng(2, "a.jpeg", "markers").random()
    assert first != robustness.variant_rng(1, "a.jpeg", "shifted").random()


def test_summary_counts_the_scorers_labels_and_any_warning():
    labels = [1, 1, 0, 0, 0]
    outcomes = [Outcome(0.9, True, ()), Outcome(0.4, False, ("out_of_distribution",)),
                Outcome(0.8, True, ("out_of_distribution", "other")), Outcome(0.1, False, ()),
                Outcome(rejected="too_small")]
    summary = robustness.summarise(labels, outcomes)
    assert summary["n"] == 4 and summary["positives"] == 2 and summary["negatives"] == 2
    assert summary["sensitivity"] == 0.5 and summary["specificity"] == 0.5 and summary["accuracy"] == 0.5
    assert summary["auc"] == 0.75  # 0.9 > both normals, 0.4 above only 0.1
    assert summary["warned"] == 0.5
    assert summary["warnings"] == {"other": 1, "out_of_distribution": 2}
    assert summary["rejected"] == {"too_small": 1}


def test_one_class_has_no_auc_and_nothing_scored_has_no_figures():
    assert robustness.summarise([0, 0], [Outcome(0.2, False), Outcome(0.9, True)])["auc"] is None
    empty = robustness.summarise([1], [Outcome(rejected="not_an_image")])
    assert empty["n"] == 0 and empty["auc"] is None and empty["warned"] is None


def test_change_from_clean_and_labels_that_moved():
    labels = [1, 0, 0]
    clean = [Outcome(0.9, True), Outcome(0.2, False), Outcome(0.3, False)]
    occluded = [Outcome(0.95, True), Outcome(0.8, True, ("w",)), Outcome(rejected="x")]
    compared = robustness.against_clean(occluded, clean, robustness.summarise(labels, occluded),
                                        robustness.summarise(labels, clean))
    assert compared["change"]["specificity"] == -1.0
    assert compared["change"]["sensitivity"] == 0.0
    assert compared["change"]["warned"] == 0.5
    assert compared["label_changed"] == 0.5  # of the two images scored both ways
    assert compared["mean_abs_probability_change"] == pytest.approx(0.325)


@dataclass
class FrameReader:
    """A stand-in scorer that reads only the left edge: bright edge -> PNEUMONIA. It refuses
    images narrower than `min_width` and warns on images with a black top row."""

    min_width: int = 0
    seen: list = None

    def score(self, data: bytes):
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        self.seen = (self.seen or []) + [pixels.shape]
        if pixels.shape[1] < self.min_width:
            raise ImageRejected("too_small", "narrow")
        probability = float(pixels[:, :5].mean()) / 255
        warnings = ("black_top",) if not pixels[0].any() else ()
        return type("Scored", (), {"probability": probability, "positive": probability >= 0.5,
                                   "warnings": warnings})()


def png(pixels: np.ndarray) -> bytes:
    return robustness.encode_png(pixels)


def test_a_frame_reading_scorer_breaks_under_occlusion_and_its_figures_say_so():
    # Positives have a bright left edge, normals a dark one; the lung area is the same grey.
    cases = []
    for index in range(6):
        pixels = np.full((80, 100), 120, np.uint8)
        pixels[:, :12] = 200 if index % 2 else 30
        cases.append(Case(f"case{index}.png", index % 2, png(pixels)))
    scorer = FrameReader()
    measured = robustness.measure_set(scorer, cases, "L", seed=0)

    clean, occluded = measured["variants"]["clean"], measured["variants"]["frame_occluded"]
    assert measured["images"] == 6 and clean["accuracy"] == 1.0 and clean["auc"] == 1.0
    assert occluded["sensitivity"] == 0.0 and occluded["warned"] == 1.0
    assert occluded["change"]["sensitivity"] == -1.0 and occluded["label_changed"] == 0.5
    assert measured["variants"]["zoom_out_edge"]["label_changed"] == 0.0
    # Each variant reached the scorer as an image of its own geometry.
    assert (80, 100) in scorer.seen and (72, 76) in scorer.seen and (68, 85) in scorer.seen
    assert set(measured["variants"]) == set(robustness.VARIANTS)


def test_refused_images_are_counted_not_fatal():
    cases = [Case("a.png", 1, png(np.full((80, 100), 200, np.uint8))), Case("b.png", 0, b"not an image")]
    measured = robustness.measure_set(FrameReader(min_width=90), cases, "L", seed=0)
    assert measured["variants"]["clean"]["n"] == 1
    assert measured["variants"]["clean"]["rejected"] == {"not_an_image": 1}
    assert measured["variants"]["frame_cropped"]["rejected"] == {"not_an_image": 1, "too_small": 1}


def test_subsample_is_seeded_and_keeps_the_order():
    items = list(range(50))
    drawn = robustness.subsample(items, 10, seed=1)
    assert drawn == sorted(drawn) and len(drawn) == 10 and drawn == robustness.subsample(items, 10, seed=1)
    assert robustness.subsample(items, None, seed=1) == items and robustness.subsample(items, 99, seed=1) == items


def test_card_section_only_for_the_model_it_measured(tmp_path):
    result = {"model": {"version": "v", "sha256": "abc"}, "threshold": 0.5, "seed": 1, "limit": None,
              "threads": 1, "seconds": 3.0, "definition": {"clean": "as is"},
              "sets": {"nih": {"images": 2, "variants": {"clean": robustness.summarise(
                  [0, 1], [Outcome(0.2, False), Outcome(0.7, True, ("w",))])}}}}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / robustness.REPORT_FILE).write_text(json.dumps(result))

    section = robustness.measured_section(tmp_path, "abc")
    assert section.startswith(robustness.CARD_START) and section.endswith(robustness.CARD_END)
    assert "| nih | clean | 2 | 1.000 | 100.0% | 100.0% | 100.0% | 50.0% | - |" in section
    assert "in-sample" not in section
    result["population_head_trained_on"] = ["nih", "lung_masks"]
    assert "fitted on the nih images, so their warned share here is in-sample" in robustness.card_section(result)
    assert "Not measured" in robustness.measured_section(tmp_path, "another model")
    assert "Not measured" in robustness.measured_section(tmp_path / "nowhere", "abc")


def test_runs_end_to_end_on_the_shipped_model(tmp_path):
    data = tmp_path / "data"
    copy_data_subset(data, {"chest_xray/train": 3, "chest_xray/val": 2})
    nih_source, nih = DATA_DIR / robustness.NIH_SET, data / robustness.NIH_SET
    with (nih_source / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [next(r for r in rows if r["label"] == "NORMAL"), next(r for r in rows if r["label"] == "PNEUMONIA")]
    for row in chosen:
        (nih / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(nih_source / row["file"], nih / row["file"])
    with (nih / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)

    out = tmp_path / "robustness.json"
    result = robustness.main(["--data", str(data), "--out", str(out), "--limit", "3"])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["sets"]["validation"]["images"] == 3  # the official val's 4, drawn down to 3
    nih_clean = result["sets"]["nih"]["variants"]["clean"]
    assert nih_clean["n"] == 2 and nih_clean["positives"] == 1 and nih_clean["auc"] in (0.0, 0.5, 1.0)
    for measured in result["sets"].values():
        assert set(measured["variants"]) == set(robustness.VARIANTS)
        assert all(row["n"] == measured["images"] for row in measured["variants"].values())


def test_the_training_card_carries_the_section_of_its_own_model(tmp_path):
    from pneumoscan.model import default_model_dir
    from training.report import write_model_card

    metadata = json.loads((default_model_dir() / "model.json").read_text())
    write_model_card(tmp_path, metadata)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "Not measured for this model yet: `make robustness`" in card
    assert card.index(robustness.CARD_END) < card.index("## Limitations")

    result = json.loads((default_model_dir() / "report" / robustness.REPORT_FILE).read_text())
    result["model"]["sha256"] = metadata["sha256"]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / robustness.REPORT_FILE).write_text(json.dumps(result))
    write_model_card(tmp_path, metadata)
    assert "| validation | frame_occluded |" in (tmp_path / "MODEL_CARD.md").read_text()
