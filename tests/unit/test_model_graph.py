"""The shipped model's graph keeps the layout its inference time was measured with
(the export itself is held to it in the training smoke test)."""

from model_graph import assert_fast_layout
from pneumoscan.model import PneumoniaModel, default_model_dir


def test_the_shipped_model_standardises_in_float_and_runs_in_one_xnnpack_partition():
    assert_fast_layout(default_model_dir() / PneumoniaModel().metadata.file)
