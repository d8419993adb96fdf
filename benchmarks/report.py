"""results.json -> RESULTS.md, and the short version docs/costs.md embeds."""

from __future__ import annotations

RUNTIME_NAMES = {
    "keras-predict": "Keras float, TF `model.predict` (seed)",
    "keras-call": "Keras float, TF direct `model(x)` (seed)",
    "litert-f32": "LiteRT 2.3 float32",
    "litert-int8": "LiteRT 2.3 int8 (shipped)",
    "tflite214-int8": "tflite-runtime 2.14 int8 (Python 3.11)",
}
STAGE_NAMES = {
    "s3_get": "S3 get (local moto server)",
    "decode": "decode (reduced, shipped)",
    "resize_preprocess": "resize + preprocess",
    "decode_plus_preprocess": "decode + resize + preprocess",
    "inference": "inference (LiteRT int8, 1 thread)",
    "cam_overlay": "heat map (CAM, summary, stored grid; the PNG too when OverlayImages asks)",
    "dynamodb_write": "DynamoDB write (local moto server)",
}
TARGET_NAMES = {
    "inference_p50_ms": "inference p50",
    "decode_plus_preprocess_p50_ms": "decode + preprocess p50, 1-2 MP JPEG",
    "cold_start_ms": "cold start (imports + model load + handler init), p50",
    "cost_per_million_usd": "cost per million JPEG/PNG images, all-in (USD)",
    "billed_ms_per_image": "billed handler ms per image at the template's memory (30 % below 108.0, same machine)",
}


def _ms(summary: dict | None, key: str = "p50_ms") -> str:
    if not summary or key not in summary:
        return "-"
    value = summary[key]
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _section(results: dict, key: str, title: str) -> tuple[list[str], dict | None]:
    """The heading, and the section's results or the reason it was not measured."""
    lines = [f"## {title}", ""]
    section = results.get(key)
    return (lines if section else lines + _skipped(results, key)), section


def _skipped(results: dict, section: str) -> list[str]:
    reason = results.get("skipped", {}).get(section)
    return [f"_Not measured in this run: {reason}_", ""] if reason else []


def render(results: dict) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    model = meta.get("model", {})
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` in one run, {meta['started_at']} to {meta.get('finished_at', '?')} (UTC), "
        f"on {meta['images']} full-resolution originals (`{meta['data']}`), commit `{machine['commit']}`"
        f"{' (with uncommitted changes)' if machine['uncommitted_changes'] else ''}, "
        f"model `{model.get('version', '?')}` (`{model.get('sha256', '?')}`).",
        "",
        f"Machine: {machine['cpu']}, {machine['architecture']}, {machine['cores']} cores, "
        f"{machine['memory_gb']} GB RAM, Linux {machine['kernel']}, Python {machine['python']}; "
        f"load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}"
        f"{_load_at_end(machine)}. "
        f"{meta['lambda_note']}. Warm figures are per image on one pinned core; the local moto server "
        "runs on the other core.",
        "",
    ]
    lines += _targets(results) + _stages(results) + _cold_start(results) + _runtimes(results) + _decoding(results)
    lines += _dicom_decoding(results)
    lines += _threads(results) + _throughput(results) + _memory(results) + _cost(results)
    leftover = {k: v for k, v in results.get("skipped", {}).items()}
    if leftover:
        lines += ["## Not measured", ""] + [f"- {name}: {reason}" for name, reason in leftover.items()] + [""]
    return "\n".join(lines)


def _load_at_end(machine: dict) -> str:
    end = machine.get("load_average_at_end")
    return f", at the end {', '.join(f'{x:.2f}' for x in end)}" if end else ""


def _targets(results: dict) -> list[str]:
    rows = []
    for target in results.get("targets", []):
        if target["measured"] is None:
            verdict = "not measured"
        elif target["met"]:
            verdict = "met"
        else:
            verdict = f"**missed by {target['over_by_pct']:.0f}%**"
        rows.append([TARGET_NAMES[target["target"]], f"<= {target['limit']:g}",
                     "-" if target["measured"] is None else f"{target['measured']:.2f}", verdict])
    return ["## Targets (warm handler, one core, network excluded)", ""] + _table(
        ["target", "limit", "measured", "verdict"], rows)


def _stages(results: dict) -> list[str]:
    lines, stages = _section(results, "stages", "Where the time goes, per image (ms)")
    if not stages:
        return lines
    rows = [[name, _ms(stages["stages"].get(key)), _ms(stages["stages"].get(key), "p95_ms")]
            for key, name in STAGE_NAMES.items() if key in stages["stages"]]
    handler = stages["handler"]
    for key, label in (("single", "whole handler, 1 record per invocation"),
                       ("batch", f"whole handler, {handler['batch']['batch_size']} records per invocation")):
        rows.append([label, _ms(handler[key]["wall"]), _ms(handler[key]["wall"], "p95_ms")])
        rows.append(["&nbsp;&nbsp;of which CPU in the handler process", _ms(handler[key]["cpu"]),
                     _ms(handler[key]["cpu"], "p95_ms")])
    if "handler_overlay_all" in stages:
        rows.append([f"whole handler, {handler['batch']['batch_size']} per invocation, OverlayImages=all "
                     "(a PNG PUT per image)",
                     _ms(stages["handler_overlay_all"]["batch"]["wall"]),
                     _ms(stages["handler_overlay_all"]["batch"]["wall"], "p95_ms")])
    rows.append(["first invocation after init (lazy client setup, first S3/DynamoDB connection)",
                 f"{handler['first_invocation_ms']:.1f}", ""])
    lines += _table(["stage", "p50", "p95"], rows)
    calls = handler["batch"]["aws_calls_per_image"]
    statuses = ", ".join(f"{count} {status}" for status, count in stages.get("item_statuses", {}).items())
    lines += [f"Items written: {statuses}. "
              f"AWS calls per image by the handler: {', '.join(f'{k} {v:g}' for k, v in calls.items())}. "
              f"Stages are timed separately after the handler pass (median of {stages['repeats_per_image']} "
              "repeats per image); the S3 and DynamoDB rows are local HTTP to moto, not AWS latency.", ""]
    return lines


LAYOUT_NAMES = {"zip_as_built": "zip as built (.pyc compiled in)", "zip_without_pyc": "same without .pyc",
                "zip_with_pyc": "same with .pyc compiled in", "dev_venv": "dev venv"}


def _cold_start(results: dict) -> list[str]:
    lines, cold = _section(
        results, "cold_start", "Cold start: fresh process, imports + model load + handler module init (ms)")
    if not cold:
        return lines
    layouts = cold["layouts"]
    header = ["step"] + [f"{LAYOUT_NAMES.get(name, name)} p50" for name in layouts]
    steps = next(iter(layouts.values()))["steps"]
    rows = [[step.replace("_", " ")] + [_ms(layout["steps"].get(step)) for layout in layouts.values()]
            for step in steps]
    rows.append(["**total init** (p50 / p95)"] + [f"**{_ms(layout['init'])}** / {_ms(layout['init'], 'p95_ms')}"
                                                  for layout in layouts.values()])
    rows.append(["peak RSS after init, MB"] + [layout["peak_rss_mb_after_init"] for layout in layouts.values()])
    lines += _table(header, rows)
    return lines + [f"{cold['repeats']} fresh processes per layout, pinned to one core; the Lambda's package set "
                    f"for this CPU (function requirements in the task folder, botocore precompiled as in the "
                    f"runtime); target figure: {LAYOUT_NAMES.get(cold['reported'], cold['reported'])}. "
                    f"A bare interpreter start (`python -S -c pass`, not counted) takes "
                    f"{_ms(cold['interpreter_start_ms'])} ms. {cold['note']}.", ""]


def _runtimes(results: dict) -> list[str]:
    lines, section = _section(
        results, "runtimes", "Side by side: the seed's approach vs LiteRT (same images, fresh process each, one core)")
    if not section:
        return lines
    agreement, ratios = section.get("agreement_vs_float_keras", {}), section.get("ratios_p50_vs_litert_int8", {})
    rows = []
    for name, run in section["runtimes"].items():
        agree = agreement.get(name, {})
        rows.append([RUNTIME_NAMES.get(name, name), f"{run['import_and_load_ms']:.0f}",
                     f"{run['first_inference_ms']:.1f}", _ms(run["per_image"]), _ms(run["per_image"], "p95_ms"),
                     f"{ratios[name]:.1f}x" if name in ratios else "-", f"{run['peak_rss_mb']:.0f}",
                     agree.get("max_abs_probability_diff", "-"), agree.get("label_flips", "-")])
    lines += _table(["runtime", "import + load ms", "first inference ms", "p50 ms", "p95 ms", "p50 vs int8", "peak RSS MB",
                     "max abs diff of P vs float Keras", "label flips vs float Keras"], rows)
    for name, reason in section.get("skipped", {}).items():
        lines.append(f"- {RUNTIME_NAMES.get(name, name)} not run: {reason}")
    return lines + [""] if section.get("skipped") else lines


def _decoding(results: dict) -> list[str]:
    lines, section = _section(results, "decoding", "Decoding large JPEGs: full decode vs Pillow draft")
    if not section:
        return lines
    names = {"full": "full decode, then resize", "reduced": "draft to the smallest scale >= 224 px (shipped)",
             "eighth": "draft to 1/8 always, then resize (up, below 224 px for most)"}
    rows = []
    for variant, run in section["variants"].items():
        band = next((v for k, v in run.items() if k.startswith("decode_plus_preprocess_") and k.endswith("_mp")), {})
        vs_full = run["vs_full"]
        rows.append([names.get(variant, variant), _ms(run["decode"]), _ms(run["resize_preprocess"]),
                     _ms(run["decode_plus_preprocess"]), _ms(run["decode_plus_preprocess"], "p95_ms"), _ms(band),
                     f"{section['speedup_vs_full_p50'][variant]:.2f}x", vs_full["max_abs_probability_diff"],
                     vs_full["label_flips"]])
    megapixels = section["megapixels"]
    lines += _table(["variant", "decode p50", "preprocess p50", "total p50", "total p95", "total p50, 1-2 MP",
                     "speed-up", "max abs diff of P vs full", "label flips vs full"], rows)
    inference = section.get("inference")
    if inference:
        lines += [f"Inference on the shipped variant's inputs, same pass (`PneumoniaModel.predict`, the mirrored "
                  f"pass included for the {100 * inference['flip_averaged_share']:.1f} % in the flip band): p50 "
                  f"{_ms(inference)}, p95 {_ms(inference, 'p95_ms')} ms; the targets' inference figure. The "
                  "stage table's inference row is the same call timed between the local moto server's "
                  "requests, whose work on the other vCPU slows this one on this VM.", ""]
    return lines + [f"{section['images']} images, {megapixels['min']}-{megapixels['max']} MP (median "
                    f"{megapixels['median']}); ms, median of {section['repeats_per_image']} repeats per image. "
                    f"Fastest variant that flips no label: **{section['fastest_without_label_flip']}**; "
                    f"shipped: **{section['shipped_default']}**."
                    + (" The shipped decoder never upsamples: `eighth` gives the model a 1/8-scale image "
                       "(about 190 px for a 1.5 MP radiograph) stretched up to 224 px, a loss of detail that "
                       f"no flips on {section['images']} training-set images cannot clear."
                       if section["fastest_without_label_flip"] == "eighth" else ""), ""]


def _dicom_decoding(results: dict) -> list[str]:
    lines, section = _section(results, "dicom_decoding", "DICOM: decode per transfer syntax, memory, imports")
    if not section:
        return lines
    rows = [[name.replace("_", " "), _ms(run), _ms(run, "p95_ms"), run["mean_file_mb"]]
            for name, run in section["transfer_syntaxes"].items()]
    lines += _table(["transfer syntax", "decode + resize p50", "p95", "mean file MB"], rows)
    memory = section["memory_4k_16bit"]
    imports = section["imports"]
    return lines + [
        f"{section['images']} originals written as 12-bit data in 16-bit words (JPEG baseline: the original "
        f"8-bit JPEG in a DICOM wrapper); ms per image, median of {section['repeats_per_image']} repeats, "
        "through the scoring path's decode step (`pneumoscan.scoring.decode`: DICOM decode and the shared resize).",
        "",
        f"A {memory['image']} image peaks at {memory['max_peak_rss_mb']:.0f} MB RSS in a fresh process "
        f"(" + ", ".join(f"{name.replace('_', ' ')} {run['peak_rss_mb']:.0f} MB"
                         for name, run in memory["by_syntax"].items())
        + f"; the function has {memory['function_memory_mb']} MB).",
        "",
        f"Imports, fresh process, median of 3: JPEG/PNG path {imports['import_jpeg_path_ms']:.0f} ms "
        f"(pydicom loaded: {'yes' if imports['jpeg_path_imports_pydicom'] else 'no'}); DICOM decoding "
        f"{imports['import_dicom_decode_ms']:.0f} ms and the structured report "
        f"{imports['import_structured_report_ms']:.0f} ms more, paid by the first DICOM object a container sees.",
        ""]


def _threads(results: dict) -> list[str]:
    section = results.get("runtimes", {}).get("threads_and_batch")
    if not section:
        return []
    rows = [[name.replace("_", " "), _ms(run["per_image"]), _ms(run["per_image"], "p95_ms")]
            for name, run in section.items()]
    return ["## Interpreter threads and batch size (LiteRT int8, ms per image)", ""] + _table(
        ["layout", "p50", "p95"], rows) + [results["runtimes"]["threads_note"] + ".", ""]


def _throughput(results: dict) -> list[str]:
    lines, section = _section(
        results, "throughput", "Local stack throughput (moto server + N workers running the real handler)")
    if not section:
        return lines
    rows = [[count, run["images"], run["elapsed_s"], run["images_per_s"], run["steady_images_per_s"],
             f"{run['speedup_vs_first']:.2f}x", max(run["worker_peak_rss_mb"])]
            for count, run in section["by_workers"].items()]
    return lines + _table(["workers", "images", "elapsed s (worker start to last item)", "images/s",
                           "images/s between first and last result", "vs 1 worker", "worker peak RSS MB"],
                          rows) + [f"{section['note']} ({section['cores']} cores).", ""]


def _memory(results: dict) -> list[str]:
    lines = ["## Memory and artifact size", ""]
    memory, artifact = results.get("memory"), results.get("artifact")
    if memory:
        lines += [f"Handler peak RSS {memory['handler_peak_rss_mb']} MB "
                  f"(x{1.5:g} headroom: {memory['min_memory_mb_with_headroom']} MB); "
                  f"template MemorySize {memory['template_memory_mb']} MB.", ""]
        lines += _table(["process", "peak RSS MB"], [[k.replace("_", " "), v]
                                                     for k, v in memory["peak_rss_mb"].items()])
    if artifact:
        largest = ", ".join(f"{name} {size}" for name, size in artifact["largest_mb"].items())
        lines += [f"Lambda artifact (`sam build`, arm64, built {artifact['built']}): "
                  f"**{artifact['unzipped_mb']} MB unzipped**, {artifact['zipped_mb']} MB zipped; "
                  f"largest parts (MB): {largest}.", ""]
    else:
        lines += _skipped(results, "artifact")
    return lines


def _cost(results: dict) -> list[str]:
    lines, section = _section(results, "cost", "Cost per million images (AWS on-demand list prices)")
    if not section:
        return lines
    by_memory = section["by_memory_mb"]
    line_names = list(next(iter(by_memory.values()))["lines_usd"])
    header = ["MemorySize MB"] + [name.replace("_", " ") for name in line_names] + ["billed ms/image", "total $"]
    rows = []
    for memory_mb, estimate in by_memory.items():
        mark = " (template)" if int(memory_mb) == section["chosen_memory_mb"] else ""
        rows.append([f"{memory_mb}{mark}"] + [f"{estimate['lines_usd'][n]:.3f}" for n in line_names]
                    + [f"{estimate['billed_ms_per_image']:.1f}", f"**{estimate['total_usd']:.2f}**"])
    option = section.get("overlay_all_at_chosen_memory")
    if option:
        rows.append([f"{section['chosen_memory_mb']}, OverlayImages=all"]
                    + [f"{option['lines_usd'][n]:.3f}" for n in line_names]
                    + [f"{option['billed_ms_per_image']:.1f}", f"**{option['total_usd']:.2f}**"])
    chosen = by_memory[str(section["chosen_memory_mb"])]
    lines += [f"Rows by MemorySize use the template's OverlayImages={section.get('overlay_setting')} (the heat "
              "map stored in the item, overlays drawn where they are looked at); the last row is the same "
              "handler measured writing a PNG overlay for every image to S3 (`positives` lies in between, in "
              "proportion to the positive rate).", ""]
    lines += _table(header, rows)
    return lines + [f"{section['basis']}: at {chosen['memory_mb']} MB, {chosen['handler_cpu_ms']:.1f} ms CPU / "
                    f"{chosen['cpu_share']:.2f} vCPU + {chosen['handler_wait_ms']:.1f} ms waiting on the local "
                    f"S3/DynamoDB = {chosen['billed_ms_per_image']:.1f} ms billed per image. "
                    f"DynamoDB: {chosen['dynamodb_item_bytes']} B item (p50), {chosen['dynamodb_wru_per_write']} "
                    f"WRU per write to the table, plus {chosen['index_writes_per_image']:.2f} index entries per "
                    "image (the sparse attention-index holds the positive, failed and warned share of this "
                    "sample; each entry is the keys and the listing fields, one WRU); the read before the "
                    f"write is {'strongly' if chosen['consistent_reads'] else 'eventually'} consistent. "
                    f"Logs: {chosen['log_bytes_per_image']:.0f} B ingested per image (the handler's lines "
                    "and EMF, 26 B per event, Lambda's START/END/REPORT lines shared by the batch). "
                    f"{section['rate_basis']}: {chosen['images_per_s']:.0f} images/s, "
                    f"{chosen['xray_traced_share'] * 100:.1f} % of invocations traced, "
                    f"{chosen['kms_requests_per_image']:.5f} KMS requests per image (S3 Bucket Keys; SQS "
                    f"KmsDataKeyReusePeriodSeconds 300). Prices: {section['region']}, checked "
                    f"{section['prices_checked']} (`benchmarks/prices.py`). Not included: {section['not_included']}.",
                    ""]


SECTION_MARKER = "<!-- BENCHMARK SECTION"


def costs_section(results: dict) -> str:
    """The short version for docs/costs.md; the full tables stay in RESULTS.md."""
    meta, machine = results["meta"], results["meta"]["machine"]
    lines = [f"Measured by `make bench` ({meta['started_at'][:16].replace('T', ' ')} UTC, {machine['cpu']} "
             f"{machine['architecture']}, model `{meta.get('model', {}).get('version', '?')}`, "
             f"{meta['images']} full-resolution originals); all tables and how each figure is taken: "
             "[benchmarks/RESULTS.md](../benchmarks/RESULTS.md). The Lambda runs on arm64, whose per-core "
             "speed differs from this machine's.", ""] + _targets(results)[2:]
    rows = []
    stages = results.get("stages")
    if stages:
        stage, batch = stages["stages"], stages["handler"]["batch"]
        rows.append(["handler CPU per image, warm, one core (network excluded)",
                     f"{_ms(batch['cpu'])} ms: decode + preprocess {_ms(stage['decode_plus_preprocess'])}, "
                     f"inference {_ms(stage['inference'])}"
                     + (f", heat map {_ms(stage['cam_overlay'])}" if "cam_overlay" in stage else "")])
        rows.append([f"whole handler per image against the local stack ({batch['batch_size']} per invocation)",
                     f"{_ms(batch['wall'])} ms"])
    cold = results.get("cold_start")
    if cold:
        layouts = cold["layouts"]
        rows.append(["cold start (imports + model load + handler init)",
                     " / ".join(f"{_ms(layout['init'])} ms {LAYOUT_NAMES.get(name, name)}"
                                for name, layout in layouts.items())])
    memory, artifact = results.get("memory"), results.get("artifact")
    if memory:
        rows.append(["peak RSS of the handler", f"{memory['handler_peak_rss_mb']} MB "
                     f"(MemorySize {memory['template_memory_mb']} MB)"])
    if artifact:
        rows.append(["Lambda artifact", f"{artifact['unzipped_mb']} MB unzipped, {artifact['zipped_mb']} MB zipped"])
    lines += _table(["", "measured"], rows)
    cost = results.get("cost")
    if cost:
        chosen = cost["by_memory_mb"][str(cost["chosen_memory_mb"])]
        priced = [(f"OverlayImages={cost['overlay_setting']} (template)", chosen)]
        if cost.get("overlay_all_at_chosen_memory"):
            priced.append(("OverlayImages=all (a PNG per image in S3)", cost["overlay_all_at_chosen_memory"]))
        lines += _table(["at MemorySize " f"{cost['chosen_memory_mb']} MB", "$ per 1000 images", "$ per million"],
                        [[name, f"{estimate['total_usd'] / 1000:.4f}", f"{estimate['total_usd']:.2f}"]
                         for name, estimate in priced])
        lines += _table(["cost line at the template's settings", "$ per million"],
                        [[name.replace("_", " "), f"{value:.3f}"] for name, value in chosen["lines_usd"].items()])
        lines += [f"AWS on-demand list prices ({cost['region']}, checked {cost['prices_checked']}, "
                  "`benchmarks/prices.py`), KMS requests, CloudWatch Logs and X-Ray included; "
                  f"not included: {cost['not_included']}.", ""]
    return "\n".join(lines).strip() + "\n"


def embed_section(page: str, section: str) -> str:
    """Replace what follows the BENCHMARK SECTION comment, up to the next heading, with `section`."""
    start = page.index(SECTION_MARKER)
    body = page.index("-->", start) + len("-->")
    end = page.find("\n## ", body)
    end = len(page) if end < 0 else end + 1
    return page[:body] + "\n\n" + section + "\n" + page[end:]
