"""The README's two commands are the newcomer's contract; CI must run the second one verbatim."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return re.findall(r"```bash\n(.*?)```", handle.read(), flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    install_and_test = _blocks()[1].strip()
    assert "pytest" in install_and_test
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        assert install_and_test in handle.read().splitlines()


def test_first_command_runs_the_quickstart():
    first = _blocks()[0].strip()
    assert first.endswith("python examples/quickstart.py") and "pip install" in first
    assert os.path.exists(os.path.join(ROOT, "examples", "quickstart.py"))
