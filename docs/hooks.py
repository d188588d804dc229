"""MkDocs hooks: pages generated from the code at build time, so they cannot drift.

* ``reference.md``: the API reference, one mkdocstrings entry per public name of ``tfsynapse``
  (``tfsynapse.__all__``, resolved to the module that defines it) and of ``tflite_export``.
* ``cli-reference.md``: the ``tfsynapse`` command's ``--help`` and each subcommand's.
* ``results.md``: ``benchmarks/RESULTS.md`` with its plots.

Nothing here imports TensorFlow: the names come from ``tfsynapse._EXPORTS`` (a dict) and the
parser from ``tfsynapse.cli.parser`` (argparse only).
"""

import os

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXTERNAL = "tfmot's class, re-exported unchanged (see the TensorFlow Model Optimization docs)"


def api_reference():
    """The API reference page: every public name, in ``__all__`` order of each package."""
    import tfsynapse
    import tflite_export

    lines = ["# API reference", "",
             "Generated from the docstrings of every public name (`tfsynapse.__all__`, "
             "`tflite_export.__all__`).", "", "## tfsynapse", ""]
    for name in tfsynapse.__all__:
        module, attribute = tfsynapse._EXPORTS[name]
        if attribute is None:
            lines += [f"### tfsynapse.{name}", "", f"::: {module}",
                      "    options:", "      show_root_heading: false", "      members: false", ""]
        elif "." in attribute:  # a tfmot object the backend re-exports
            lines += [f"### tfsynapse.{name}", "", f"`{attribute.split('.')[-1]}`: {_EXTERNAL}.",
                      ""]
        else:
            lines += [f"::: {module}.{attribute}", "", ]
    lines += ["## tflite_export", ""]
    for name in tflite_export.__all__:
        if name.isupper():
            lines += [f"### tflite_export.{name}", "",
                      f"`{getattr(tflite_export, name)!r}`", ""]
        else:
            lines += [f"::: tflite_export.{name}", ""]
    return "\n".join(lines)


def cli_reference():
    """The CLI reference page: ``tfsynapse --help`` and every subcommand's help."""
    from tfsynapse.cli.parser import build_parser

    parser = build_parser()
    lines = ["# Command-line reference", "", "Generated from the parser (`tfsynapse --help`).", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse has no API
        for name, sub in action.choices.items():
            lines += [f"## tfsynapse {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def on_files(files, config):
    """Adds the generated pages and the benchmark plots to the site."""
    files.append(File.generated(config, "reference.md", content=api_reference()))
    files.append(File.generated(config, "cli-reference.md", content=cli_reference()))
    bench = os.path.join(ROOT, "benchmarks")
    with open(os.path.join(bench, "RESULTS.md"), encoding="utf-8") as handle:
        files.append(File.generated(config, "results.md", content=handle.read()))
    for name in sorted(os.listdir(bench)):
        if name.endswith(".png"):
            files.append(File.generated(config, name, abs_src_path=os.path.join(bench, name)))
    return files
