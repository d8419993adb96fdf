"""The shortcut check: shares against the uniform baseline, run end to end on a few real images."""

import json

import numpy as np
import pytest

from image_cases import copy_data_subset
from pneumoscan import cam
from training import shortcut_check


def test_uniform_heat_baseline_is_the_area_of_each_region():
    # Border: 1 - 0.8 * 0.8 of the image; outside the chest box: 1 - 0.7 * 0.8.
    assert shortcut_check.uniform_shares() == {"border_share": 0.36, "outside_chest_share": 0.44}
    assert cam.summarise(np.ones((14, 14), np.float32), (1000, 800)).border_share == pytest.approx(0.36)


def test_check_writes_json_and_figure_for_the_model(tmp_path):
    data = tmp_path / "data"
    copy_data_subset(data, {"chest_xray/train": 3, "chest_xray/val": 2, "xray_fullres_sample": 4})

    result = shortcut_check.main(["--data", str(data), "--out", str(tmp_path / "report")])

    written = json.loads((tmp_path / "report" / shortcut_check.REPORT_FILE).read_text())
    assert written == json.loads(json.dumps(result))
    assert (tmp_path / "report" / shortcut_check.FIGURE_FILE).stat().st_size > 10_000
    fullres = written["splits"]["fullres"]
    assert fullres["images"] == 8 and not fullres["unreadable"]
    assert 0 <= fullres["border_share"]["mean"] <= fullres["border_share"]["max"] <= 1
    assert written["splits"]["val"]["images"] == 4  # the official val; 3 train patients per class are too few to carve
    assert written["cam_overlay_ms_per_fullres_image"]["images"] == 8 - shortcut_check.TIMING_WARMUP


def test_model_card_section_is_inserted_once_and_then_replaced(tmp_path):
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card\n\n## Metrics\nAUC\n\n## Limitations\nmany\n")

    shortcut_check.update_model_card(card, f"{shortcut_check.CARD_START}\nfirst\n{shortcut_check.CARD_END}")
    shortcut_check.update_model_card(card, f"{shortcut_check.CARD_START}\nsecond\n{shortcut_check.CARD_END}")

    text = card.read_text()
    assert text.count(shortcut_check.CARD_START) == 1 and "first" not in text
    assert text.index("AUC") < text.index("second") < text.index("## Limitations")
