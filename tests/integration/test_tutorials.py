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


def test_the_install_step_refuses_to_guess_a_repository():
    namespace = {"IN_COLAB": True}
    code = sync_tutorials.COLAB_INSTALL.replace("%pip", "raise AssertionError  # pip")
    try:
        exec(code, namespace)
    except SystemExit as e:
        assert "LENS_DIGITS_REPOSITORY" in str(e)
    else:
        raise AssertionError("the install step must stop while no repository is set")
