"""The documentation site builds strictly from a fresh checkout, and its API reference covers
every public name (a broken link, a docstring mkdocstrings cannot parse, or a public name left
out fails here)."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", os.path.join(ROOT, "docs",
                                                                             "hooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("index.html", "reference/index.html", "cli-reference/index.html",
                 "results/index.html", "guides/usage/index.html", "speed.png"):
        assert (tmp_path / "site" / page).exists(), page
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "prune_synaptic" in reference and "Raises" in reference  # docstrings rendered


def test_the_api_reference_names_every_public_name():
    pytest.importorskip("mkdocs", reason="the docs extra builds the site")
    import tfsynapse  # noqa: PLC0415
    import tflite_export  # noqa: PLC0415

    page = _hooks().api_reference()
    for name in tfsynapse.__all__:
        module, attribute = tfsynapse._EXPORTS[name]  # noqa: SLF001 - the export table
        entry = f"::: {module}.{attribute}" if attribute and "." not in attribute \
            else f"### tfsynapse.{name}"
        assert entry in page, name
    for name in tflite_export.__all__:
        assert f"tflite_export.{name}" in page, name


def test_the_cli_reference_has_every_subcommand():
    pytest.importorskip("mkdocs", reason="the docs extra builds the site")
    page = _hooks().cli_reference()
    for command in ("inspect", "prune", "shrink", "export", "bench", "criteria"):
        assert f"## tfsynapse {command}" in page, command


def test_the_readme_stays_short_and_links_the_docs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert len(text.splitlines()) <= 125
    for page in ("docs/getting-started.md", "docs/methods.md", "docs/architecture.md",
                 "docs/guides/cli.md", "docs/guides/limits.md", "docs/benchmarks.md"):
        assert f"]({page})" in text, page
        assert os.path.exists(os.path.join(ROOT, page)), page
