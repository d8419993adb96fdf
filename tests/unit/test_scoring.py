"""The one scoring path: bytes in, a typed score out, with its seams for checks and overlays."""

import dataclasses

import numpy as np
import pytest

from image_cases import FULLRES_DIR, REFERENCE_XRAY
from pneumoscan import cam, images, scoring
from pneumoscan.model import CamUnavailable, ModelLoadError, PneumoniaModel
from pneumoscan.scoring import ImageRejected, Scorer

pytestmark = pytest.mark.skipif(not REFERENCE_XRAY.is_file(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def model():
    return PneumoniaModel()


@pytest.fixture(scope="module")
def xray():
    return REFERENCE_XRAY.read_bytes()


@pytest.fixture(scope="module")
def positive_xray(model):
    """A full-resolution X-ray the model labels positive."""
    for path in sorted((FULLRES_DIR / "PNEUMONIA").glob("*.jpeg")):
        pixels, _ = images.load_model_input(path.read_bytes(), *model.input_shape)
        if model.predict(pixels).probability[0] >= model.threshold:
            return path.read_bytes()
    pytest.fail("no X-ray in the sample is labelled positive")


def test_the_score_is_the_models_own_on_the_decoders_pixels(model, xray):
    scored = Scorer(model).score(xray)
    pixels, decoded = images.load_model_input(xray, *model.input_shape)
    probability = float(model.predict(pixels).probability[0])
    assert scored.probability == pytest.approx(probability, abs=1e-7)
    assert scored.label == model.label(probability) and scored.positive == (scored.label == model.metadata.positive_label)
    assert scored.threshold == model.threshold and scored.model_version == model.version
    assert (scored.image.width, scored.image.height, scored.image.format) == (decoded.width, decoded.height, "JPEG")
    assert set(scored.timings_ms) == set(scored.cpu_ms) == {scoring.DECODE, scoring.INFERENCE, scoring.HEAT_MAP}
    assert scored.warnings == () and scored.heat_map_error is None
    summary = scored.heat_map.summary
    assert 0.0 <= summary.border_share <= 1.0 and summary.hot_region is not None


def test_overlays_follow_the_policy(model, xray, positive_xray):
    scorer = Scorer(model)
    assert scorer.score(xray).overlay_png is None
    assert scorer.score(xray, overlay="all").overlay_png.startswith(b"\x89PNG")
    negative = scorer.score(xray, overlay="positives")
    positive = scorer.score(positive_xray, overlay="positives")
    assert not negative.positive and negative.overlay_png is None
    assert positive.positive and positive.overlay_png.startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="overlay policy"):
        scorer.score(xray, overlay="some")


def test_checks_see_the_evidence_and_add_their_codes_in_order(model, xray):
    seen = []

    def looks(evidence):
        seen.append(evidence)
        return None

    scorer = Scorer(model, checks=[looks, lambda _: "second_code", lambda _: "third_code"])
    scored = scorer.score(xray)
    assert scored.warnings == ("second_code", "third_code")
    evidence = seen[0]
    assert evidence.pixels.shape == model.input_shape and evidence.probability == scored.probability
    assert evidence.pooled_features.shape == model.metadata.cam.weights.shape
    # The pooled features are what the dense head reads: weights . features + bias is the logit.
    logit = float(evidence.pooled_features @ model.metadata.cam.weights + model.metadata.cam.bias)
    assert 1 / (1 + np.exp(-logit)) == pytest.approx(scored.probability, abs=0.02)


def test_a_check_may_refuse_an_image(model, xray):
    def refuse(_):
        raise ImageRejected("blank_image", "nothing to see")

    with pytest.raises(ImageRejected) as refused:
        Scorer(model, checks=[refuse]).score(xray)
    assert refused.value.reason == "blank_image"


def test_a_broken_heat_map_never_holds_back_the_score(model, xray, monkeypatch):
    def broken(*_, **__):
        raise IndexError("injected")

    monkeypatch.setattr(cam, "summarise", broken)
    scored = Scorer(model).score(xray, overlay="all")
    assert scored.heat_map is None and scored.overlay_png is None
    assert scored.heat_map_error == "IndexError: injected" and 0.0 <= scored.probability <= 1.0


def test_undecodable_bytes_and_oversized_objects_are_rejected_with_a_reason(model, tmp_path):
    with pytest.raises(ImageRejected) as rejected:
        Scorer(model).score(b"referral letter")
    assert rejected.value.reason == "not_an_image"
    big = tmp_path / "big.jpeg"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(ImageRejected) as rejected:
        Scorer(model).score_file(big, max_bytes=1000)
    assert rejected.value.reason == "object_too_large" and "1000-byte limit" in rejected.value.detail


def test_a_model_without_threshold_or_cam_is_refused(monkeypatch):
    for missing, error in (("threshold", ModelLoadError), ("cam", CamUnavailable)):
        model = PneumoniaModel()
        model.metadata = dataclasses.replace(model.metadata, **{missing: None})
        with pytest.raises(error, match=missing):
            Scorer(model)


def test_the_models_own_checks_refuse_blanks_before_any_heat_map_and_caption_warnings(model, xray, monkeypatch):
    import io

    from PIL import Image

    from pneumoscan import overlay as overlays

    titles = []
    drawn = overlays.overlay_png
    monkeypatch.setattr(overlays, "overlay_png", lambda *a, **k: titles.append(k["title"]) or drawn(*a, **k))
    summarised = []
    real_summarise = cam.summarise
    monkeypatch.setattr(cam, "summarise", lambda *a, **k: summarised.append(1) or real_summarise(*a, **k))

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, "PNG")
        return buffer.getvalue()

    scorer = Scorer(model)  # the model's own checks: pneumoscan.ood and pneumoscan.population
    with pytest.raises(ImageRejected) as refused:
        scorer.score(png(np.full((300, 300), 255)), overlay="all")
    assert refused.value.reason == "blank_image" and not summarised and not titles

    noise = scorer.score(png(np.random.default_rng(0).integers(0, 256, (300, 300))), overlay="all")
    # Noise is far from every X-ray: the distance warns, and so, on these features, does the population head.
    assert noise.warnings[0] == "out_of_distribution" and set(noise.warnings) <= {"out_of_distribution", "adult_like_image"}
    assert titles[-1].endswith("WARNING: " + ", ".join(noise.warnings))
    plain = scorer.score(xray, overlay="all")
    assert plain.warnings == () and "WARNING" not in titles[-1] and "(heat: evidence for" in titles[-1]
