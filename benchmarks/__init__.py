"""`make bench`: where the time and the money go, measured in one run on this machine.

`python -m benchmarks` runs every section and writes `benchmarks/results.json` and
`benchmarks/RESULTS.md`. A section whose prerequisite is missing (no model yet, no
tflite-runtime venv, no `sam build` output) is recorded as skipped with its reason.
"""
