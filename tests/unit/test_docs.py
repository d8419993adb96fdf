"""The documentation against the code: the tables that restate the code (the template's
Parameters, the failure reasons, the CLI's commands, the model's figures) say what the code
says, and no relative link leads nowhere."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from pneumoscan.model import ModelMetadata, default_model_dir
from pneumoscan_cli.main import app
from pneumoscan_cli.template import load_template

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra"))
import check_docs  # noqa: E402 - a script beside the packages, imported by path

SOURCES = [*(ROOT / "functions" / "scorer").rglob("*.py"), *(ROOT / "infra" / "pneumoscan_cli").rglob("*.py")]


def table_after(page: Path, marker: str) -> list[list[str]]:
    """The body cells of the first Markdown table from the line that starts with `marker` on."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rows = []
    for line in lines[start:]:
        if line.startswith("|"):
            cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def codes(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_parameters_table_lists_every_template_parameter_with_its_default():
    parameters = load_template(ROOT / "template.yaml")["Parameters"]
    documented = {}
    for name_cell, default_cell, _ in table_after(ROOT / "docs" / "operations.md", "`template.yaml` Parameters"):
        names, defaults = sorted(codes(name_cell), key=name_cell.index), [d.strip() for d in default_cell.split(",")]
        for name, default in zip(names, defaults if len(defaults) == len(names) else [default_cell] * len(names)):
            documented[name] = default.strip("`\"")
    assert set(documented) == set(parameters)
    for name, spec in parameters.items():
        assert documented[name] == str(spec.get("Default", "")), name


def _string_constants(tree: ast.AST) -> dict[str, str]:
    return {target.id: node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _strings_in(node: ast.AST, constants: dict[str, str]) -> set[str]:
    found = set()
    for part in ast.walk(node):
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            found.add(part.value)
        elif isinstance(part, ast.Name) and part.id in constants:
            found.add(constants[part.id])
        elif isinstance(part, ast.Attribute) and part.attr in constants:
            found.add(constants[part.attr])
    return {value for value in found if re.fullmatch(r"[a-z][a-z_]+", value)}


def failure_reasons_in_code() -> set[str]:
    """Every reason code the scorer and the CLI can record: the first argument of a rejection,
    a `reason` variable, a `REASON` attribute of an item, and the local-file failures."""
    trees = [ast.parse(path.read_text()) for path in SOURCES]
    constants = {name: value for tree in trees for name, value in _string_constants(tree).items()}
    reasons = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"ImageRejected", "Rejected"} \
                    and node.args:
                reasons |= _strings_in(node.args[0], constants)
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "reason" for t in node.targets):
                reasons |= _strings_in(node.value, {})  # a literal, not a value read from an item
            elif isinstance(node, ast.Dict):
                reasons |= {value for key, item in zip(node.keys, node.values)
                            if getattr(key, "id", None) == "REASON"
                            for value in _strings_in(item, constants)}
            elif isinstance(node, ast.FunctionDef) and node.name == "file_failure":
                returned = next(part.value for part in ast.walk(node) if isinstance(part, ast.Return))
                reasons |= _strings_in(returned.elts[0], constants)
    return reasons


def test_failure_reasons_table_lists_every_reason_the_code_records():
    documented = set().union(*(codes(row[0]) for row in table_after(ROOT / "docs" / "results.md", "Failure reasons")))
    in_code = failure_reasons_in_code()
    assert {"empty", "blank_image", "object_missing", "unknown_event", "unreadable_file"} <= in_code
    assert documented == in_code


def cli_commands() -> set[str]:
    group = typer.main.get_command(app)
    names = set()
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        names |= {f"{name} {sub}" for sub in subcommands} if subcommands else {name}
    return names


def test_cli_table_names_every_command_and_only_real_ones():
    rows = table_after(ROOT / "docs" / "operations.md", "| command | what it does |")
    column = " ".join(row[0] for row in rows)
    shown = set()
    for command in cli_commands():
        group, _, sub = command.partition(" ")
        pattern = rf"\b{group}\b" + (rf"[^`]*\b{sub}\b" if sub else "")
        if re.search(rf"`(pneumoscan )?{pattern}", column):
            shown.add(command)
    assert shown == cli_commands()
    groups = {command.split()[0] for command in cli_commands()}
    assert set(re.findall(r"pneumoscan ([a-z][a-z-]*)", column)) <= groups


def _range(values: list[float], fmt: str) -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def model_table(meta: ModelMetadata) -> str:
    """The front page's table of where the model stands, from model.json."""
    metrics = meta.metrics
    val = metrics["val"]
    lines = ["| measured on | images | AUC | sensitivity | specificity |", "|---|---|---|---|---|",
             f"| validation, by patient (int8; the collection it was trained on) | {val['n']} | {val['auc']:.3f} | "
             f"{val['sensitivity'] * 100:.1f} % | {val['specificity'] * 100:.1f} % |"]
    if block := metrics.get("patient_block_hold_out"):
        lines.append(f"| the lowest-numbered {block['fraction']:.0%} of each collection's patients, never trained or "
                     f"validated on (int8) | {block['n']} | {block['auc']:.3f} | {block['sensitivity'] * 100:.1f} % | "
                     f"{block['specificity'] * 100:.1f} % |")
    held_out: dict[str, list[dict]] = {}
    for run in metrics.get("collection_hold_out", []):
        held_out.setdefault(run["held_out_collection"], []).append(run)
    for collection, runs in held_out.items():
        count = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
        lines.append(f"| the `{collection}` normals, the recipe retrained without them ({count}; Keras) | "
                     f"{runs[0]['held_out_normals']} | "
                     f"{_range([r['held_out_auc_vs_val_positives'] for r in runs], '{:.3f}')} against val pneumonia | "
                     f"{_range([r['val_sensitivity'] * 100 for r in runs], '{:.1f}')} % on val | "
                     f"{_range([r['held_out_specificity'] * 100 for r in runs], '{:.1f}')} % |")
    return "\n".join(lines)


def test_front_page_model_table_is_the_bundled_models():
    meta = ModelMetadata.read(default_model_dir())
    readme = (ROOT / "README.md").read_text()
    assert f"model `{meta.version}`" in readme and f"threshold {meta.threshold:.4f}" in readme
    assert model_table(meta) in readme, f"README's model table is not model.json's; it reads:\n{model_table(meta)}"


def test_the_subtype_figures_on_the_front_page_and_in_the_model_page_are_the_bundled_models():
    meta = ModelMetadata.read(default_model_dir())
    assert meta.subtype is not None, "the bundled model has no subtype head: run make subtype"
    val, (low, high) = meta.subtype.extra["validation"], meta.subtype.uncertain_band
    recall = val["recall"]

    def flat(page: Path) -> str:
        return " ".join(page.read_text().split())

    readme, page = flat(ROOT / "README.md"), flat(ROOT / "docs" / "model.md")
    assert f"validation AUC {val['auc']:.3f}, accuracy {val['accuracy'] * 100:.1f} %" in readme
    assert f"`subtype_uncertain` for {val['uncertain_share'] * 100:.0f} % of the positives" in readme
    assert (f"Measured for model {meta.version} on the {val['n']} validation pneumonias it calls PNEUMONIA "
            f"(by patient): AUC {val['auc']:.3f}, accuracy {val['accuracy'] * 100:.1f} %, recall "
            f"{recall['bacterial'] * 100:.1f} % bacterial and {recall['viral'] * 100:.1f} % viral at the threshold "
            f"{meta.subtype.threshold:.4f}; {val['uncertain_share'] * 100:.1f} % fall in the band "
            f"({low:.4f}-{high:.4f})") in page
    assert f"For model {meta.version} that is {val['uncertain_share'] * 100:.0f} % of the validation" in page


def test_every_relative_link_in_the_docs_resolves():
    pages = check_docs.default_pages()
    assert {"README.md", "docs/results.md", "model/MODEL_CARD.md"} <= {str(p.relative_to(ROOT)) for p in pages}
    assert [problem for page in pages for problem in check_docs.broken_links(page)] == []


@pytest.mark.parametrize("link, why", [("[schema](docs/no-such-page.md)", "no such file"),
                                       ("[keys](docs/results.md#no-such-heading)", "no heading"),
                                       ("[here](#nowhere)", "no heading")])
def test_link_check_fails_on_a_broken_link(tmp_path, link, why):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n\n## Keys and indexes\n")
    page = tmp_path / "README.md"
    page.write_text(f"# Front\n\nSee {link}, [fine](docs/results.md#keys-and-indexes), "
                    "`[code](nowhere.md)`, [web](https://example.org/x.md).\n\n```\n[fenced](nowhere.md)\n```\n")
    problems = check_docs.broken_links(page)
    assert len(problems) == 1 and why in problems[0] and problems[0].split(": ")[0].endswith("README.md:3")
    result = subprocess.run([sys.executable, str(ROOT / "infra" / "check_docs.py"), str(page)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and why in result.stderr


def test_heading_ids_follow_github():
    assert check_docs.heading_id("What `make bench` measured") == "what-make-bench-measured"
    assert check_docs.heading_id("Where the cost per image goes, and what was done about it") == \
        "where-the-cost-per-image-goes-and-what-was-done-about-it"
    assert check_docs.heading_id("The operator CLI: `pneumoscan`") == "the-operator-cli-pneumoscan"
