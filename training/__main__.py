"""`python -m training` : train, export and report the pneumonia model.

    python -m training                        # ../shared/data/chest_xray -> model/
    python -m training --data DIR --epochs 3  # any Kaggle-layout folder
    python -m training --run-dir runs/x       # resumes runs/x if it was interrupted
    python -m training --ensemble runs/a runs/b   # logit-average of finished runs, no training
    python -m training --hold-out-collection NORMAL2 --run-dir runs/x   # the shift proxy, no export
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pneumoscan_eval.datasets import TRAINING_SET, default_data_dir

from .augment import AugmentConfig
from .holdout import run_holdout, summary_line
from .pipeline import MIN_SENSITIVITY, RunOptions, promote, run, run_ensemble
from .train import TrainConfig

DEFAULT_DATA = default_data_dir() / TRAINING_SET
AUGMENT_PRESETS = {
    "full": AugmentConfig(),
    "geometry": AugmentConfig(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0,
                              blur_probability=0.0, sharpen_probability=0.0, noise_std=0.0),
    # Close to the first full preset (model 2026.11.25-2, which used a 3x3 binomial blur).
    "mild": AugmentConfig(gamma=(0.7, 1.45), contrast=(0.7, 1.3), blur_probability=0.3,
                          blur_sigma_max=0.7, sharpen_probability=0.2, sharpen_amount=1.0),
    # "full" plus what other scanners and exports do: another image's tone curve, local
    # gamma, resampling and JPEG round trips, border strips and burned-in markers.
    "acquisition": AugmentConfig(histogram_match_probability=0.5, local_gamma_probability=0.5,
                                 resample_probability=0.4, jpeg_probability=0.4,
                                 border_probability=0.25, marker_probability=0.25),
    # "acquisition" with more of the frame randomised, for lung crops: strips up to 15 % deep on
    # any edge and burned-in blocks, so what the crop's margin shows of the frame carries no label.
    "lung-context": AugmentConfig(histogram_match_probability=0.5, local_gamma_probability=0.5,
                                  resample_probability=0.4, jpeg_probability=0.4,
                                  border_probability=0.45, border_max_fraction=0.15, marker_probability=0.35),
    "none": AugmentConfig(rotation_degrees=0.0, zoom=0.0, translation=0.0, gamma=(1.0, 1.0),
                          contrast=(1.0, 1.0), brightness=0.0, blur_probability=0.0,
                          sharpen_probability=0.0, noise_std=0.0, flip=False),
}


def main(argv: list[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="Kaggle-layout folder with train/{NORMAL,PNEUMONIA} (default %(default)s)")
    parser.add_argument("--model-dir", type=Path, default=Path("model"),
                        help="where the .tflite, model.json, card and report go (default %(default)s)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/latest"),
                        help="checkpoints and logs; an interrupted run here is resumed (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="weights, order, augmentation")
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed,
                        help="which patients form the validation split")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--widths", default=",".join(map(str, defaults.widths)),
                        help="filters of the five conv blocks (default %(default)s)")
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--augment", choices=tuple(AUGMENT_PRESETS), default="acquisition",
                        help="ablations: geometry only, or no augmentation at all")
    parser.add_argument("--ensemble", type=Path, nargs="+", metavar="RUN_DIR",
                        help="skip training: export the logit average of these finished runs")
    parser.add_argument("--promote", type=Path, metavar="EXPORT_DIR",
                        help="skip training: publish a finished run's export folder into --model-dir")
    parser.add_argument("--hold-out-collection", metavar="NAME",
                        help="train without one acquisition collection (NORMAL2, IM, person) and report "
                             "its specificity at each threshold rule into RUN_DIR/holdout.json; no export")
    parser.add_argument("--min-sensitivity", type=float, default=MIN_SENSITIVITY,
                        help="threshold rule: highest specificity with at least this validation "
                             "sensitivity (default %(default)s, chosen by the hold-out proxy)")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=True,
                        help="export test-time flip averaging (image and mirror image, mean logit; "
                             "default on, chosen by the hold-out proxy)")
    parser.add_argument("--proxy", type=Path, nargs="+", default=[], metavar="HOLDOUT_JSON",
                        help="holdout.json of this recipe's --hold-out-collection runs, recorded in the metrics")
    parser.add_argument("--segmenter", type=Path, default=None, metavar="DIR",
                        help="a lung segmenter's folder (python -m training.segmenter): train on and export "
                             "lung crops (default: the whole image)")
    parser.add_argument("--hold-out-block", type=float, default=0.0, metavar="FRACTION",
                        help="leave the lowest-numbered FRACTION of each collection's patients out of training "
                             "and validation, and score the export on them")
    parser.add_argument("--box-jitter", type=float, default=defaults.box_jitter,
                        help="lung crops: each crop edge moves by up to this share of the box (default %(default)s)")
    parser.add_argument("--subtype-weight", type=float, default=defaults.subtype_weight,
                        help="train a bacterial/viral head with the network, at this share of the loss "
                             "(default %(default)s: the detector alone)")
    parser.add_argument("--limit-per-class", type=int, default=None,
                        help="use only N images per class and split (smoke tests)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the float reference models in model/reference/")
    parser.add_argument("--no-parity-gate", action="store_true",
                        help="record a failed int8/Keras parity check instead of stopping (smoke runs)")
    parser.add_argument("--version", default=None, help="model version (default YYYY.MM.DD-N)")
    args = parser.parse_args(argv)

    config = dataclasses.replace(defaults, epochs=args.epochs, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate, seed=args.seed, split_seed=args.split_seed,
                                 val_fraction=args.val_fraction, dropout=args.dropout,
                                 label_smoothing=args.label_smoothing,
                                 widths=tuple(int(w) for w in args.widths.split(",")),
                                 augment=AUGMENT_PRESETS[args.augment], box_jitter=args.box_jitter,
                                 subtype_weight=args.subtype_weight)
    options = RunOptions(data_dir=args.data, model_dir=args.model_dir, run_dir=args.run_dir,
                         limit_per_class=args.limit_per_class,
                         reference_models=not args.no_reference, version=args.version,
                         enforce_parity=not args.no_parity_gate, min_sensitivity=args.min_sensitivity,
                         flip_average=args.flip_average, proxy_results=tuple(args.proxy),
                         segmenter_dir=args.segmenter, hold_out_block=args.hold_out_block)
    if args.hold_out_collection:
        result = run_holdout(config, args.data, args.run_dir, args.hold_out_collection)
        print(summary_line(result))
        return
    if args.promote:
        metadata = promote(args.promote, args.model_dir, args.version, tuple(args.proxy))
        print(f"published {args.promote} as {metadata['version']} in {args.model_dir}")
        return
    result = run_ensemble(args.ensemble, options) if args.ensemble else run(config, options)
    metadata = result["metadata"]
    print(json.dumps({"version": metadata["version"], "threshold": metadata["threshold"],
                      "val": {k: metadata["metrics"]["val"][k]
                              for k in ("n", "auc", "sensitivity", "specificity", "accuracy")},
                      "parity": metadata["metrics"]["parity"],
                      "size_bytes": metadata["size_bytes"],
                      "training_seconds": metadata["training"]["seconds"]}, indent=2))


if __name__ == "__main__":
    main()
