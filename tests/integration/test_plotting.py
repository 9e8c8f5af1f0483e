import plotly.graph_objects as go
import pytest

import lens_digits as ld
from lens_digits.results.figures import static_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_static_image_returns_what_plotly_renders(monkeypatch):
    calls = []

    def fake(self, **kwargs):
        calls.append(kwargs)
        return PNG_MAGIC + b"rest"

    monkeypatch.setattr(go.Figure, "to_image", fake)
    assert static_image(go.Figure(), width=300) == PNG_MAGIC + b"rest"
    assert static_image(go.Figure(), format="svg", scale=1.0) == PNG_MAGIC + b"rest"
    assert calls == [{"format": "png", "scale": 2.0, "width": 300}, {"format": "svg", "scale": 1.0}]  # sharp by default


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


def test_figure_options_cell_text_colours_facets_and_lines(native_model):
    import lens_digits as ld

    grid = ld.run_sweep(native_model, scales=[1, 2], n_per_scale=30, methods=["logit_lens", "probe"], target="answer", seed=5)
    fig = grid.figure(text=True, colorscale="Blues")
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert all(t.texttemplate == "%{z:.2f}" for t in heat) and fig.layout.coloraxis.colorscale[0][1] == "rgb(247,251,255)"
    # emergence markers sit at the emergence table's layers, on their scale's row
    marks = [t for t in fig.data if t.type == "scatter"]
    e = grid.emergence
    main = e[(e["place"] == "all") & (e["carries"] == "all") & e["layer"].notna()]
    drawn = sorted((float(t.name.split("≥ ")[1]), int(c[0]), str(y)) for t in marks for c, y in zip(t.customdata, t.y, strict=True))
    want = sorted((float(r.threshold), int(r.layer), str(int(r.scale))) for r in main.itertuples())
    assert drawn == want
    # each marker inside its layer's cell, thresholds side by side (two met at one layer stay visible)
    assert all(abs(x - c[0]) < 0.5 for t in marks for x, c in zip(t.x, t.customdata, strict=True))
    assert len({round(t.x[0] - t.customdata[0][0], 3) for t in marks}) == len({t.name for t in marks})
    faceted = grid.figure(facet="place")
    panels = [t.name for t in faceted.data if t.type == "heatmap"]
    assert "logit_lens · answer · tens" in panels and "probe · answer · units" in panels
    assert [a.text for a in faceted.layout.annotations if a.text.startswith("place ")] == ["place units", "place tens", "place hundreds"]
    by_carries = grid.figure(facet="carries", markers=False)
    assert all(t.type == "heatmap" for t in by_carries.data) and len(by_carries.data) == 2 * len(set(grid.table["carries"]) - {"all"})
    line = grid.figure(kind="lines")
    bands = [t for t in line.data if t.fill == "toself"]
    assert len(bands) == 2 * 2 and all(t.mode == "lines" for t in bands)  # a band per method and scale
    with pytest.raises(ld.LensDigitsError, match="facet"):
        grid.figure(facet="nope")
    with pytest.raises(ld.LensDigitsError, match="kind"):
        grid.figure(kind="bars")


def test_subtitle_wraps_to_the_figure_width():
    from lens_digits.results.figures import wrap

    text = " · ".join(["a-long-method-name"] * 12)
    wrapped = wrap(text, width=60)
    assert all(len(line) <= 60 for line in wrapped.split("<br>")) and wrapped.replace("<br>", " · ") == text
