"""The HTML report, opened in headless Chromium: every image renders, sorting and filtering work."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pneumoscan import overlay
from pneumoscan_cli import report

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")

# Appended to a copy of the page: clicks the real buttons after load, then writes what it saw
# into the DOM, which `--dump-dom` prints.
HARNESS = """<script>
window.addEventListener("load", () => {
  const rows = () => Array.from(document.querySelectorAll("#results tbody tr"))
    .filter((row) => !row.hidden && row.getBoundingClientRect().height > 0);
  const click = (selector) => document.querySelector(selector).click();
  const probabilities = () => rows().map((row) => row.dataset.probability);
  const images = Array.from(document.images);
  const seen = {
    images: images.length,
    decoded: images.filter((img) => img.complete && img.naturalWidth > 0).length,
    laid_out: images.filter((img) => img.getBoundingClientRect().width > 0).length,
  };
  click('[data-sort="desc"]'); seen.desc = probabilities();
  click('[data-sort="asc"]'); seen.asc = probabilities();
  click('[data-filter="positives"]'); seen.positives = rows().map((row) => row.dataset.label);
  seen.shown_positives = document.getElementById("shown").textContent;
  click('[data-filter="failures"]'); seen.failures = rows().map((row) => row.dataset.status);
  click('[data-filter="flagged"]'); seen.flagged = rows().map((row) => row.dataset.flagged);
  click('[data-filter="warned"]'); seen.warned = rows().map((row) => row.querySelector(".name").firstChild.textContent);
  seen.warning_badges = rows().map((row) => row.querySelector(".probability .warning").textContent);
  click('[data-filter="all"]'); click('[data-sort="input"]');
  seen.all = rows().map((row) => row.dataset.position);
  const out = document.createElement("pre");
  out.id = "harness";
  out.textContent = JSON.stringify(seen);
  document.body.append(out);
});
</script>"""


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed on first use where this user may (CI machines run as root)."""
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, check=True, capture_output=True)
        return shutil.which("chromium")
    pytest.fail("chromium is not installed: apt-get install -y chromium (make test does this)")


def dump_dom(chromium, page, profile):
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
               "--dump-dom", page.as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return completed.stdout


def _picture(seed, size=(400, 300)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L")


def _scored(name, probability, *, outside_chest_share=0.1, seed=0, warnings=()):
    picture = _picture(seed)
    heat = np.random.default_rng(seed).random((7, 7)).astype(np.float32)
    label = "PNEUMONIA" if probability >= 0.5 else "NORMAL"
    png = overlay.encode_png(overlay.render_overlay(picture, heat, title=f"P = {probability:.3f}   {label}"))
    return report.ReportEntry(name, "SCORED", probability, label, model_version="2026.11.25-1",
                              border_share=0.05, outside_chest_share=outside_chest_share,
                              thumbnail=report.thumbnail(picture), overlay=report.as_jpeg(png), warnings=warnings)


LABELS = ("NORMAL", "PNEUMONIA")
ENTRIES = [
    _scored("incoming/b/a.jpeg", 0.31, seed=1),
    _scored("incoming/b/b <&>.jpeg", 0.97, seed=2),
    report.ReportEntry("incoming/b/notes.jpeg", "FAILED", reason="not_an_image", error="not a JPEG or PNG image"),
    _scored("incoming/b/c.jpeg", 0.02, outside_chest_share=0.8, seed=3),
    _scored("incoming/b/d.png", 0.64, seed=4, warnings=("out_of_distribution",)),
    report.ReportEntry("incoming/b/big.jpeg", "FAILED", reason="object_too_large", error="70 MB"),
]


def test_summary_counts_and_flags():
    counts = report.summarise(ENTRIES, "PNEUMONIA")
    assert counts == {"images": 6, "scored": 4, "positives": 2, "negatives": 2, "failures": 2, "warned": 1,
                      "bacterial": 0, "viral": 0, "uncertain": 0, "flagged": 1, "model_versions": ["2026.11.25-1"]}


def test_page_is_self_contained_and_escapes_names():
    page = report.render_html(ENTRIES, source="batch b", labels=LABELS)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from a network
    assert "b &lt;&amp;&gt;.jpeg" in page and "b <&>.jpeg" not in page
    assert page.count("data:image/jpeg;base64,") == 8  # thumbnail + overlay of each scored image
    # The warning sits beside the score it qualifies and is counted in the summary.
    assert re.search(r'class="probability">0\.640<span class="warning" title="[^"]+">out_of_distribution</span>', page)
    assert '<b>1</b>warned' in page


def test_report_renders_sorts_and_filters_in_chromium(chromium, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(report.render_html(ENTRIES, source="batch b", labels=LABELS).replace("</body>", HARNESS + "</body>"))
    dom = dump_dom(chromium, page, tmp_path / "profile")
    seen = json.loads(re.search(r'<pre id="harness">(.*?)</pre>', dom, re.S).group(1))

    assert seen["images"] == seen["decoded"] == seen["laid_out"] == 8
    assert seen["desc"] == ["0.970000", "0.640000", "0.310000", "0.020000", "", ""]  # failures last
    assert seen["asc"] == ["0.020000", "0.310000", "0.640000", "0.970000", "", ""]
    assert seen["positives"] == ["PNEUMONIA", "PNEUMONIA"] and seen["shown_positives"] == "2 of 6 shown"
    assert seen["failures"] == ["FAILED", "FAILED"]
    assert seen["flagged"] == ["1"]
    assert seen["warned"] == ["incoming/b/d.png"] and seen["warning_badges"] == ["out_of_distribution"]
    assert seen["all"] == ["0", "1", "2", "3", "4", "5"]


def test_offline_report_scores_local_files_with_the_lambdas_path(tmp_path):
    from typer.testing import CliRunner

    from image_cases import FULLRES_DIR
    from pneumoscan_cli.main import app

    xrays = [FULLRES_DIR / "NORMAL" / "IM-0214-0001.jpeg", min((FULLRES_DIR / "PNEUMONIA").glob("*.jpeg"))]
    letter = tmp_path / "letter.jpeg"
    letter.write_text("referral letter, not an image")
    noise = tmp_path / "noise.png"
    _picture(9).save(noise)
    page = tmp_path / "offline.html"

    result = CliRunner().invoke(app, ["report", *map(str, xrays), str(letter), str(noise), "-o", str(page)])

    assert result.exit_code == 0, result.output
    html_text = page.read_text()
    rows = re.findall(r'data-status="(\w+)" data-label="(\w*)"', html_text)
    assert rows[:2] == [("SCORED", rows[0][1]), ("SCORED", rows[1][1])] and rows[2] == ("FAILED", "")
    assert all(label in ("NORMAL", "PNEUMONIA") for _, label in rows[:2])
    assert html_text.count('<img class="overlay"') == html_text.count('<img class="thumbnail"') == 3
    assert "not_an_image" in html_text
    # Noise is scored and warned; the X-rays are not, unless a positive's subtype is uncertain.
    warned = re.findall(r'data-warned="(\d)" data-subtype="(\w*)"', html_text)
    assert [flag for flag, _ in warned] == [str(int(subtype == "uncertain")) for _, subtype in warned[:3]] + ["1"]
    assert f"{1 + sum(subtype == 'uncertain' for _, subtype in warned[:3])} warned" in result.output


def test_an_unexpected_error_on_one_file_is_its_failed_row_in_the_offline_report(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from image_cases import FULLRES_DIR
    from pneumoscan.scoring import Scorer
    from pneumoscan_cli.main import app

    xrays = [FULLRES_DIR / "NORMAL" / "IM-0214-0001.jpeg", min((FULLRES_DIR / "PNEUMONIA").glob("*.jpeg"))]
    real_score_file = Scorer.score_file

    def choke_on_the_first(self, path, *args, **kwargs):
        if path == xrays[0]:
            raise TypeError("an unforeseen bug")
        return real_score_file(self, path, *args, **kwargs)

    monkeypatch.setattr(Scorer, "score_file", choke_on_the_first)
    page = tmp_path / "offline.html"

    result = CliRunner().invoke(app, ["report", *map(str, xrays), "-o", str(page)])

    assert result.exit_code == 0, result.output
    rows = re.findall(r'data-status="(\w+)"', page.read_text())
    assert rows == ["FAILED", "SCORED"]
    assert "internal_error" in page.read_text()
