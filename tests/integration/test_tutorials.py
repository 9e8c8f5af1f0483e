"""The tutorials install lens_digits on Colab from one place, and never from an unclaimed package name."""

import json
import sys

from conftest import REPO

ROOT = REPO
sys.path.insert(0, str(ROOT / "scripts"))

import sync_tutorials  # noqa: E402


def first_code_cell(path):
    nb = json.loads(path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_every_notebook_installs_from_the_one_install_step():
    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    assert len(notebooks) == 6
    for path in notebooks:
        source = first_code_cell(path)
        assert sync_tutorials.COLAB_INSTALL in source, path.name
        assert "pip install -q lens-digits\n" not in source and "pip install lens-digits" not in source, path.name


def test_the_install_step_asks_for_the_repository_and_never_guesses():
    line = '%pip install -q "lens-digits @ git+{LENS_DIGITS_REPOSITORY}"'
    assert line in sync_tutorials.COLAB_INSTALL
    code = sync_tutorials.COLAB_INSTALL.replace(line, 'installed.append(f"lens-digits @ git+{LENS_DIGITS_REPOSITORY}")')
    pasted = "https://github.com/someone/lens_digits"
    installed = []
    exec(code, {"IN_COLAB": True, "installed": installed, "input": lambda prompt: f"  {pasted} \n"})
    assert installed == [f"lens-digits @ git+{pasted}"]  # one step: run the cell, paste the address
    try:
        exec(code, {"IN_COLAB": True, "installed": installed, "input": lambda prompt: ""})
    except SystemExit as e:
        assert "paste the lens_digits repository's address" in str(e)
    else:
        raise AssertionError("the install step must stop while no repository is given")
    assert len(installed) == 1
