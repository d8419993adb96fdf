# pneumoscan: `make demo IMAGES=<dir>` and `make test` are the two commands that matter;
# `make unit` is the quick edit-run loop. `make help` lists every target (its `##` comment).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first of these that really runs (a pyenv shim can exist for a version that is not
# active), printed as a path.
runnable = $(shell for p in $(1); do $$p -c '' 2>/dev/null && { command -v $$p; break; }; done)
# The Lambda runs python3.13; develop on it when present, else the newest Python 3 here.
PYTHON ?= $(call runnable,python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3) python3.12 python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DATA ?= $(or $(PNEUMOSCAN_DATA),../shared/data)

.PHONY: help venv test lint unit build chromium dicom3tools dcmtk orthanc

help: ## list the targets
	@awk -F':.*## ' '/^[a-z0-9]+:.*## / {printf "make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

venv: $(INSTALLED) ## create .venv with the project, training and dev extras

# The local stack in one command. It never invents images: without IMAGES it says where to get some.
.PHONY: demo
demo: $(INSTALLED) ## IMAGES=<dir>: score a folder of X-rays through the local stack
	@if [ -z "$(IMAGES)" ]; then \
		echo "usage: make demo IMAGES=<folder of chest X-rays (JPEG/PNG/DICOM)>"; \
		echo "  e.g. make demo IMAGES=$(DATA)/xray_fullres_sample   (200 full-resolution originals)"; \
		echo "  or download the Kaggle dataset 'Chest X-Ray Images (Pneumonia)':"; \
		echo "  https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia"; \
		exit 2; \
	fi
	$(VENV)/bin/pneumoscan demo "$(IMAGES)"

# checkov in its own venv: its pins clash with the dev tools'.
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q 'checkov==3.3.30'

# The Lambda artifact (cross-platform arm64 wheels, no Docker); the check runs inside the build.
build: $(INSTALLED) ## the Lambda artifact (sam build) and its size/content check
	$(VENV)/bin/sam build --template template.yaml

# Benchmarks: one run writes benchmarks/results.json and benchmarks/RESULTS.md
# (BENCH_ARGS="--limit 20" for a quick look; only the full run belongs in RESULTS.md).
# tflite-runtime 2.14, the pre-LiteRT runtime, has no wheels after Python 3.11: it gets its
# own venv, and the benchmark records it as skipped (with this log's reason) if it fails.
PYTHON311 ?= $(call runnable,python3.11 $(wildcard $(HOME)/.pyenv/versions/3.11*/bin/python3))
TFLITE214 := .venv-tflite214
$(TFLITE214)/.installed:
	@rm -rf $(TFLITE214)
	@if [ -z "$(PYTHON311)" ]; then echo "no Python 3.11 on this machine" > $(TFLITE214).log; \
	elif ( $(PYTHON311) -m venv $(TFLITE214) && $(TFLITE214)/bin/pip install -q 'tflite-runtime==2.14.0' \
	       'numpy<2' pillow ) > $(TFLITE214).log 2>&1; then touch $@; \
	else echo "tflite-runtime 2.14 did not install (see $(TFLITE214).log): recorded as skipped"; fi

# Cold start is measured on the Lambda's own package set for this CPU: the function's
# requirements without .pyc (as in the zip) and boto3 precompiled (as in the runtime).
BENCH_LAMBDA := build/bench-lambda
$(BENCH_LAMBDA)/.installed: functions/scorer/requirements.txt | $(INSTALLED)
	rm -rf $(BENCH_LAMBDA)
	$(PY) -m pip install -q --no-compile --target $(BENCH_LAMBDA)/task -r functions/scorer/requirements.txt
	cd $(BENCH_LAMBDA)/task && rm -rf boto3 botocore s3transfer urllib3 dateutil six.py jmespath bin \
	    && find . -name __pycache__ -prune -exec rm -rf {} +
	$(PY) -m pip install -q --target $(BENCH_LAMBDA)/runtime \
	    "boto3==$$($(PY) -c 'from importlib.metadata import version; print(version("boto3"))')"
	touch $@

# Load test: N uploads cycling the 200 originals, WORKERS handler workers -> runs/loadtest.json.
# RATE=uploads/s paces them (default: one burst, so latency is mostly the backlog).
N ?= 2000
WORKERS ?= 3
RATE ?=
.PHONY: loadtest
loadtest: $(INSTALLED) ## N=2000: N full-res X-rays through the local stack: rate, latency, losses
	$(PY) -m benchmarks.loadtest --images $(N) --workers $(WORKERS) --data $(DATA) $(if $(RATE),--rate $(RATE))

.PHONY: bench
bench: $(INSTALLED) $(TFLITE214)/.installed $(BENCH_LAMBDA)/.installed ## time, memory and cost per image -> benchmarks/RESULTS.md
	$(MAKE) build || echo "sam build failed: the artifact size is recorded as not measured"
	$(PY) -m benchmarks --data $(DATA) $(BENCH_ARGS)

# Headless Chromium (Debian's package) opens the HTML report in its test.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium: ## install headless Chromium (the HTML report's test opens the page in it)
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium)

# dciodvfy (Debian's dicom3tools) validates the structured reports in their test.
dicom3tools: ## install dicom3tools (dciodvfy validates the structured reports)
	@command -v dciodvfy >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dicom3tools)

# dcmtk (echoscu, storescu, storescp) and Orthanc, as modality and PACS, talk DICOM to the
# gateway in its tests; where a package cannot be installed, those tests skip and say so.
dcmtk: ## install dcmtk (the gateway's tests send and receive DICOM with it)
	@command -v storescu >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk) || \
		echo "dcmtk could not be installed: the gateway's dcmtk tests will skip"

orthanc: ## install Orthanc (the PACS of the gateway's round-trip test)
	@command -v Orthanc >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq orthanc) || \
		echo "orthanc could not be installed: the gateway's Orthanc test will skip"

test: $(INSTALLED) $(CHECKOV) chromium dicom3tools dcmtk orthanc ## lint, then every test (installs what they need)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest

lint: $(INSTALLED) ## ruff (configured in pyproject.toml), the scorer package's layers, the docs' relative links
	$(VENV)/bin/ruff check .
	$(PY) infra/check_layers.py
	$(PY) infra/check_docs.py

# The edit-run loop: no local stack, no training, no artifact build (about 6 minutes on 2 busy cores).
unit: $(INSTALLED) ## the unit tests only, no integration or slow ones
	$(PY) -m pytest tests/unit -m "not integration and not slow"

# Full training + int8 export + report into model/: the lung segmenter if runs/segmenter has none
# (8.8 min measured), then 10 epochs of the classifier on lung crops with the patient block held out
# and a bacterial/viral unit trained beside its detection head (15.3 min for the shipped network's
# run on 2 cores, other jobs beside it), then the fits and checks below (~12 min); resumes runs/latest.
# The lung-field segmenter, trained on the lung masks (~9 min on 2 cores): make train crops
# every image to the lungs it finds, and ships it beside the classifier.
SEGMENTER := runs/segmenter/model
.PHONY: segmenter
segmenter: $(INSTALLED) ## train the lung-field segmenter on the lung masks -> runs/segmenter/model
	$(PY) -m training.segmenter --data $(DATA) --model-dir $(SEGMENTER) --run-dir runs/segmenter
$(SEGMENTER)/lung_field.json: | $(INSTALLED)
	$(MAKE) --no-print-directory segmenter

.PHONY: train
train: $(INSTALLED) $(SEGMENTER)/lung_field.json ## train and export the model into model/, then make ood, population, shortcut, robustness and subtype
	$(PY) -m training --data $(DATA)/chest_xray --model-dir model --run-dir runs/latest \
		--segmenter $(SEGMENTER) --augment lung-context --hold-out-block 0.15 --subtype-weight 1.5 --epochs 10 \
		$(if $(PROXY_RESULTS),--proxy $(PROXY_RESULTS))
	$(MAKE) --no-print-directory ood
	$(MAKE) --no-print-directory population
	$(MAKE) --no-print-directory shortcut
	$(MAKE) --no-print-directory robustness
	$(MAKE) --no-print-directory subtype

# The shift proxy for the current recipe: retrain without each normal collection and score it
# (runs/holdout-*/holdout.json, ~2 x 15 min on 2 idle cores); `make train` afterwards records them.
PROXY_RESULTS = $(wildcard runs/holdout-NORMAL2/holdout.json runs/holdout-IM/holdout.json)
.PHONY: proxy
proxy: $(INSTALLED) ## the shift proxy: retrain without each normal collection and score it (make train records it)
	$(PY) -m training --data $(DATA)/chest_xray --hold-out-collection NORMAL2 --run-dir runs/holdout-NORMAL2
	$(PY) -m training --data $(DATA)/chest_xray --hold-out-collection IM --run-dir runs/holdout-IM

# Out-of-distribution statistics of the model in model/ (they belong to one network: refit
# after every new model) and what they flag -> model/ood.npy, model.json `ood`, report/ood.json (~2 min).
.PHONY: ood
ood: $(INSTALLED) ## refit the out-of-distribution statistics of model/ and measure them
	$(PY) -m training.ood --data $(DATA) --model-dir model

# The adult-vs-paediatric head on the same features (adult_like_image): fitted on the training split
# and the adult sets in $(DATA), cut on held-out training patients, measured by cross-validation
# -> model.json `population`, report/population.json, the card (~1 min). After make ood: it reads
# what out_of_distribution warns on the same images.
.PHONY: population
population: $(INSTALLED) ## refit the adult_like_image head of model/ and measure what it warns
	$(PY) -m training.population --data $(DATA) --model-dir model

# Where the model looks: share of CAM heat in the image border / outside the chest, on val
# and the full-resolution originals -> model/report/shortcut.json + shortcut.png (~1 min).
.PHONY: shortcut
shortcut: $(INSTALLED) ## where the model looks (CAM heat in the border / outside the chest)
	$(PY) -m training.shortcut_check --data $(DATA) --model-dir model

# Does the score move when only the frame changes (occlusion, crop, markers, zoom, shift, strips)?
# Scored through Scorer.score on validation and the NIH half -> model/report/robustness.json and
# the card (~2 min on one busy core; ROBUSTNESS_ARGS="--limit 100" for a quick look).
.PHONY: robustness
robustness: $(INSTALLED) ## how the model's figures move when only the frame of the image changes
	$(PY) -m training.robustness --data $(DATA) --model-dir model $(ROBUSTNESS_ARGS)

# Bacterial or viral: the subtype head on the pooled features of the model in model/ (it belongs to
# one network: refit after every new model) -> model.json `subtype`, report/subtype.json (~3 min).
.PHONY: subtype
subtype: $(INSTALLED) ## fit the pneumonia subtype head (bacterial/viral) of model/ and measure it
	$(PY) -m training.subtype --data $(DATA) --model-dir model
