# pneumoscan: `make demo IMAGES=<dir>` and `make test` are the two commands that matter.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Lambda runs python3.13; develop on it when present, else the newest Python 3 here.
PYTHON ?= $(firstword $(shell command -v python3.13) $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3) $(shell command -v python3.12 python3))
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DATA ?= ../shared/data

.PHONY: help venv test build chromium

help:
	@echo "make demo IMAGES=<dir>   score a folder of X-rays through the local stack"
	@echo "make test                install what is needed and run every test"
	@echo "make train               train and export the model into model/"

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

venv: $(INSTALLED)

# The local stack in one command. It never invents images: without IMAGES it says where to get some.
.PHONY: demo
demo: $(INSTALLED)
	@if [ -z "$(IMAGES)" ]; then \
		echo "usage: make demo IMAGES=<folder of chest X-rays (JPEG/PNG)>"; \
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
build: $(INSTALLED)
	$(VENV)/bin/sam build --template template.yaml

# Headless Chromium (Debian's package) opens the HTML report in its test.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium)

test: $(INSTALLED) $(CHECKOV) chromium
	$(PY) -m pytest
