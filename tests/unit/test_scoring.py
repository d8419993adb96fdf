"""The one scoring path: bytes in, a typed score out, with its seams for checks and overlays."""

import dataclasses

import numpy as np
import pytest

from image_cases import FULLRES_DIR, REFERENCE_XRAY
from pneumoscan import cam, images, scoring
from pneumoscan.model import SUBTYPE_UNCERTAIN, CamUnavailable, ModelLoadError, PneumoniaModel, SubtypeHead
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
    # Noise is far from every X-ray: the distance warns, and so, on these features, does the population head;
    # called PNEUMONIA, its subtype may be uncertain too.
    # No lungs in noise: the segmenter's mask fails its checks first.
    assert noise.warnings[:2] == ("lung_field_not_found", "out_of_distribution")
    assert set(noise.warnings) <= {"lung_field_not_found", "out_of_distribution", "adult_like_image", SUBTYPE_UNCERTAIN}
    assert (SUBTYPE_UNCERTAIN in noise.warnings) == (noise.subtype_probability is not None and noise.subtype is None)
    assert titles[-1].endswith("WARNING: " + ", ".join(noise.warnings))
    plain = scorer.score(xray, overlay="all")
    assert plain.warnings == () and "WARNING" not in titles[-1] and "(heat: evidence for" in titles[-1]


def _with_subtype_head(band: tuple[float, float] | None, **changes) -> PneumoniaModel:
    """The bundled network with a subtype head of known weights (features summed, centred at 1)."""
    model = PneumoniaModel()
    k = model.metadata.cam.weights.size
    head = SubtypeHead(np.full(k, 1.0 / k), -0.05, 0.5, band, **changes)
    model.metadata = dataclasses.replace(model.metadata, subtype=head)
    return model


def test_a_positive_gets_the_heads_subtype_from_the_pooled_features(positive_xray, xray):
    model = _with_subtype_head(None)
    scored = Scorer(model).score(positive_xray)
    pixels, _ = images.load_model_input(positive_xray, *model.input_shape)
    pooled = model.predict(pixels).feature_map[0].mean(axis=(0, 1))
    expected = float(model.metadata.subtype.probability(pooled))
    assert scored.positive and scored.subtype_probability == pytest.approx(expected, abs=1e-6)
    assert scored.subtype == ("viral" if expected >= 0.5 else "bacterial")
    assert "subtype_uncertain" not in scored.warnings
    negative = Scorer(model).score(xray)
    assert not negative.positive and negative.subtype is None and negative.subtype_probability is None


def test_inside_the_band_a_positive_is_warned_and_given_no_subtype(positive_xray):
    scored = Scorer(_with_subtype_head((0.0, 1.0))).score(positive_xray, overlay="all")
    assert scored.subtype is None and 0.0 < scored.subtype_probability < 1.0
    assert scored.warnings[-1] == SUBTYPE_UNCERTAIN and scored.overlay_png.startswith(b"\x89PNG")


def test_a_model_without_a_subtype_head_gives_none_and_a_mismatched_head_is_refused(positive_xray):
    model = PneumoniaModel()
    model.metadata = dataclasses.replace(model.metadata, subtype=None)
    scored = Scorer(model).score(positive_xray)
    assert scored.positive and scored.subtype is None and scored.subtype_probability is None
    assert SUBTYPE_UNCERTAIN not in scored.warnings
    wrong = PneumoniaModel()
    wrong.metadata = dataclasses.replace(wrong.metadata, subtype=SubtypeHead(np.ones(3), 0.0, 0.5))
    with pytest.raises(ModelLoadError, match="subtype head reads 3 features"):
        Scorer(wrong)


def test_the_caption_names_the_subtype_and_keeps_the_heat_the_labels():
    from pneumoscan import overlay as overlays

    assert overlays.caption("PNEUMONIA", 0.91, "PNEUMONIA", (), "viral") == \
        "P(pneumonia) = 0.910   PNEUMONIA: viral   (heat: evidence for PNEUMONIA)"
    assert overlays.caption("PNEUMONIA", 0.91, "PNEUMONIA", (SUBTYPE_UNCERTAIN,)) == \
        "P = 0.910   PNEUMONIA   WARNING: subtype_uncertain"
