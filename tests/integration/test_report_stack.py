"""`pneumoscan report --batch` and `pneumoscan overlay` against the local stack over HTTP: overlays
drawn from the heat maps the real handler stored in its items."""

import base64
import io
import re

from PIL import Image

from pneumoscan import overlay, results

from .conftest import real_xrays
from .test_pipeline import _cli

BATCH = "report-check"


def test_batch_report_draws_the_overlays_from_the_items(local_stack, tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    for xray in real_xrays(per_class=2):
        (folder / xray.name).symlink_to(xray)
    (folder / "letter.jpeg").write_text("referral letter, not an image")
    _cli(local_stack, "upload", str(folder), "--batch", BATCH, "--wait", "--timeout", "120")

    target = local_stack.target
    overlays = target.client("s3").list_objects_v2(
        Bucket=target.bucket, Prefix=results.overlay_key(f"incoming/{BATCH}/", "results/").removesuffix(".png"))
    assert overlays["KeyCount"] == 0  # the template's default writes no PNG: the items hold the heat maps

    page_path = tmp_path / "report.html"
    _cli(local_stack, "report", "--batch", BATCH, "-o", str(page_path))
    # The same stack named explicitly, as for any S3/DynamoDB-compatible endpoint.
    _cli(local_stack, "report", "--batch", BATCH, "-o", str(tmp_path / "by-endpoint.html"),
         "--endpoint-url", target.endpoint_url, "--bucket", target.bucket, "--table", target.table)

    for page in (page_path.read_text(), (tmp_path / "by-endpoint.html").read_text()):
        rows = re.findall(r'<tr data-position="\d+" data-probability="([^"]*)" data-status="(\w+)"', page)
        assert sorted(status for _, status in rows) == ["FAILED", "SCORED", "SCORED", "SCORED", "SCORED"]
        overlays = re.findall(r'<img class="overlay" src="data:image/jpeg;base64,([^"]+)"', page)
        thumbnails = re.findall(r'<img class="thumbnail" src="data:image/jpeg;base64,([^"]+)"', page)
        assert len(overlays) == len(thumbnails) == 4
        for encoded in overlays:
            with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
                assert picture.width == overlay.OVERLAY_LONG_SIDE + overlay.LEGEND_WIDTH or \
                    picture.height == overlay.OVERLAY_LONG_SIDE + overlay.TITLE_HEIGHT
        assert 'data-count="failures"><b>1</b>' in page and "not_an_image" in page

    key = f"incoming/{BATCH}/{real_xrays(per_class=2)[0].name}"
    _cli(local_stack, "overlay", key, "-o", str(tmp_path / "one.png"))
    with Image.open(tmp_path / "one.png") as picture:
        assert picture.format == "PNG"
        assert picture.width == overlay.OVERLAY_LONG_SIDE + overlay.LEGEND_WIDTH or \
            picture.height == overlay.OVERLAY_LONG_SIDE + overlay.TITLE_HEIGHT
