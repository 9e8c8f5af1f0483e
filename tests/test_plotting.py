import plotly.graph_objects as go
import pytest

import lens_digits as ld
from lens_digits.plotting import static_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_static_image_returns_what_plotly_renders(monkeypatch):
    calls = []

    def fake(self, **kwargs):
        calls.append(kwargs)
        return PNG_MAGIC + b"rest"

    monkeypatch.setattr(go.Figure, "to_image", fake)
    assert static_image(go.Figure(), width=300) == PNG_MAGIC + b"rest"
    assert calls == [{"format": "png", "scale": 1.0, "width": 300}]


@pytest.mark.parametrize(
    "error",
    [RuntimeError("\n\nKaleido requires Google Chrome to be installed.\n\nmore"), ValueError("requires the kaleido package")],
)
def test_static_image_unavailable_is_a_clear_error(monkeypatch, error):
    def fail(self, **kwargs):
        raise error

    monkeypatch.setattr(go.Figure, "to_image", fail)
    with pytest.raises(ld.LensDigitsError, match=r"static image export is unavailable \(.+\).*kaleido.*BROWSER_PATH") as info:
        static_image(go.Figure())
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is error


@pytest.mark.slow
def test_static_image_of_a_grid_is_a_png_where_export_works(native_model):
    grid = ld.run_sweep(native_model, scales=[1], n_per_scale=10, target="first")
    try:
        png = static_image(grid.figure())
    except ld.LensDigitsError as e:
        pytest.skip(str(e))
    assert png.startswith(PNG_MAGIC)
