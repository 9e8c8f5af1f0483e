// The report page of lens-digits: selectors, figures (drawn by plotly.js) and the example panel.
// Generic over the grid: readings, breakdown rows and value columns are whatever the data holds.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SEP = "\u0001";

  function setStatus(text, warn) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("warn", Boolean(warn));
  }

  function base64Bytes(text) {
    // the browser's own decoder where it has one; a plain loop is 20 times faster than Uint8Array.from with a callback
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  async function inflate(id) {
    // base64 -> gzip -> text, all in the browser: nothing is fetched
    const bytes = base64Bytes($(id).textContent.trim());
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }

  const readingKey = (method, target) => method + " · " + target;

  // The breakdown row of a table row: its non-"all" labels as column=label, sorted by column, joined by "|"
  // (the same keys as the example readings' "rows").
  function rowKey(row, columns) {
    const pairs = [];
    for (const c of columns) {
      const v = row[c];
      if (v !== null && v !== undefined && v !== "all") pairs.push([c, String(v)]);
    }
    pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    return pairs.map((p) => p[0] + "=" + p[1]).join("|");
  }

  const keyLabel = (key) => (key === "" ? "all problems (whole cells)" : key.split("|").map((p) => p.replace("=", " ")).join(" · "));

  function records(frame) {
    return frame.rows.map((r) => Object.fromEntries(frame.columns.map((c, i) => [c, r[i]])));
  }

  function prepare(run, index) {
    run.index = index;
    run.rows = records(run.table);
    run.cells = new Map();
    run.keys = new Map(); // reading -> breakdown keys in order
    for (const row of run.rows) {
      row.key = rowKey(row, run.breakdown);
      const reading = readingKey(row.method, row.target);
      const cell = reading + SEP + row.key;
      if (!run.cells.has(cell)) run.cells.set(cell, []);
      run.cells.get(cell).push(row);
      if (!run.keys.has(reading)) run.keys.set(reading, []);
      const keys = run.keys.get(reading);
      if (!keys.includes(row.key)) keys.push(row.key);
    }
    for (const keys of run.keys.values()) keys.sort((a, b) => (a === "" ? -1 : b === "" ? 1 : 0));
    const columns = run.emergence.columns;
    run.marks = records(run.emergence);
    for (const m of run.marks) m.key = rowKey(m, run.breakdown.filter((c) => columns.includes(c)));
    run.byReading = new Map(run.readings.map((r) => [readingKey(r.method, r.target), r]));
  }

  function fill(select, options, chosen) {
    select.replaceChildren(
      ...options.map(([value, text]) => {
        const o = document.createElement("option");
        o.value = value;
        o.textContent = text;
        return o;
      })
    );
    select.value = options.some(([v]) => v === chosen) ? chosen : options.length ? options[0][0] : "";
    return select.value;
  }

  function pivot(rows, value) {
    const scales = [...new Set(rows.map((r) => r.scale))].sort((a, b) => a - b);
    const layers = [...new Set(rows.map((r) => r.layer))].sort((a, b) => a - b);
    const at = new Map(rows.map((r) => [r.scale + ":" + r.layer, r]));
    const get = (s, l) => {
      const r = at.get(s + ":" + l);
      return r && r[value] !== null && r[value] !== undefined ? r[value] : null;
    };
    return { scales, layers, at, z: scales.map((s) => layers.map((l) => get(s, l))) };
  }

  function colours(z, colorscale) {
    const v = z.flat().filter((x) => x !== null && Number.isFinite(x));
    if (!v.length) return { cmin: 0, cmax: 1, colorscale };
    const lo = Math.min(...v);
    const hi = Math.max(...v);
    if (lo < 0) {
      const b = Math.max(-lo, hi) || 1;
      return { cmin: -b, cmax: b, colorscale: "RdBu" }; // signed values: a difference, a score minus its control
    }
    if (hi <= 1) return { cmin: 0, cmax: 1, colorscale };
    return { cmin: lo, cmax: hi > lo ? hi : lo + 1, colorscale };
  }

  class Report {
    constructor(data) {
      this.data = data;
      this.runs = data.runs;
      this.runs.forEach(prepare);
      this.style = data.style;
      this.figure = $("figure");
      this.panel = $("panel");
      const first = this.runs[0];
      const second = this.runs.length > 1 ? this.runs[1] : first;
      const readingB = second === first && first.readings.length > 1 ? first.readings[1] : second.readings[0];
      this.state = {
        run: 0,
        reading: readingKey(first.readings[0].method, first.readings[0].target),
        breakdown: "",
        value: "accuracy",
        view: "heatmap",
        runB: second.index,
        readingB: readingKey(readingB.method, readingB.target),
        selected: null,
      };
      this.bound = false;
    }

    start() {
      for (const id of ["run", "reading", "breakdown", "value", "view", "run-b", "reading-b"]) {
        $(id).addEventListener("change", () => this.choose(id, $(id).value));
      }
      $("download-csv").addEventListener("click", () => this.downloadCsv());
      $("download-png").addEventListener("click", () => this.downloadImage("png"));
      $("download-svg").addEventListener("click", () => this.downloadImage("svg"));
      $("controls").hidden = false;
      $("hint").hidden = false;
      $("run").closest("label").hidden = this.runs.length < 2;
      setStatus("");
      return this.render();
    }

    choose(id, value) {
      const s = this.state;
      const name = { "run-b": "runB", "reading-b": "readingB" }[id] || id;
      s[name] = name === "run" || name === "runB" ? Number(value) : value;
      if (name !== "view") s.selected = null;
      return this.render();
    }

    // ---- selectors --------------------------------------------------------------------------------------

    syncControls() {
      const s = this.state;
      const run = this.runs[s.run];
      s.run = Number(fill($("run"), this.runs.map((r, i) => [String(i), r.label]), String(s.run)));
      s.reading = fill($("reading"), run.readings.map((r) => [readingKey(r.method, r.target), readingKey(r.method, r.target)]), s.reading);
      const keys = run.keys.get(s.reading) || [""];
      s.breakdown = fill($("breakdown"), keys.map((k) => [k, keyLabel(k)]), s.breakdown);
      const rows = this.rowsOf(run, s.reading, s.breakdown);
      const reading = run.byReading.get(s.reading);
      const values = run.values.filter((v) => rows.some((r) => r[v] !== null && r[v] !== undefined));
      s.value = fill($("value"), values.map((v) => [v, v === "accuracy" ? reading.accuracy : v]), s.value);
      s.view = fill($("view"), [...$("view").options].map((o) => [o.value, o.textContent]), s.view);
      $("compare-controls").hidden = s.view !== "compare";
      s.runB = Number(fill($("run-b"), this.runs.map((r, i) => [String(i), r.label]), String(s.runB)));
      const runB = this.runs[s.runB];
      s.readingB = fill($("reading-b"), runB.readings.map((r) => [readingKey(r.method, r.target), readingKey(r.method, r.target)]), s.readingB);
      for (const section of document.querySelectorAll("#provenance .run")) section.hidden = Number(section.dataset.run) !== s.run;
    }

    rowsOf(run, reading, key) {
      return run.cells.get(reading + SEP + key) || [];
    }

    // ---- figures ----------------------------------------------------------------------------------------

    heatTrace(run, reading, rows, value, axes, coloraxis, name) {
      const p = pivot(rows, value);
      const extras = ["n"];
      if (value === "accuracy" && rows.some((r) => r.ci_low !== null && r.ci_low !== undefined)) extras.push("ci_low", "ci_high");
      for (const c of run.references) if (rows.some((r) => r[c] !== null && r[c] !== undefined)) extras.push(c);
      const customdata = p.scales.map((s) =>
        p.layers.map((l) => {
          const r = p.at.get(s + ":" + l);
          return extras.map((c) => (r && r[c] !== undefined ? r[c] : null));
        })
      );
      const label = value === "accuracy" ? reading.accuracy : value;
      let hover = "layer %{x}<br>digit scale %{y}<br>" + label + " %{z:.3f}";
      extras.forEach((c, i) => {
        if (c === "n") hover += "<br>n %{customdata[" + i + "]:.0f}";
        else if (c === "ci_low") hover += "<br>95% interval %{customdata[" + i + "]:.3f} to %{customdata[" + (i + 1) + "]:.3f}";
        else if (c !== "ci_high") hover += "<br>" + c + " %{customdata[" + i + "]:.3f}";
      });
      const trace = {
        type: "heatmap",
        x: p.layers,
        y: p.scales.map(String),
        z: p.z,
        customdata,
        coloraxis,
        xaxis: axes[0],
        yaxis: axes[1],
        name,
        hovertemplate: hover + "<extra>%{fullData.name}</extra>",
        meta: { run: run.index, reading: readingKey(reading.method, reading.target) },
      };
      return { trace, pivot: p };
    }

    markers(run, reading, key, axes, scales) {
      const marks = run.marks.filter(
        (m) => m.method === reading.method && m.target === reading.target && m.key === key && m.layer !== null && scales.includes(m.scale)
      );
      const thresholds = [...new Set(marks.map((m) => m.threshold))].sort((a, b) => a - b);
      return thresholds.map((t, k) => {
        const e = marks.filter((m) => m.threshold === t);
        const shift = (k - (thresholds.length - 1) / 2) * 0.26;
        const name = "first layer with " + reading.accuracy + " ≥ " + t + " (bar: 95% interval)";
        const low = (m) => (m.ci_low === null ? m.layer : m.ci_low);
        const high = (m) => (m.ci_high === null ? m.layer : m.ci_high);
        return {
          type: "scatter",
          mode: "markers",
          x: e.map((m) => m.layer + shift),
          y: e.map((m) => String(m.scale)),
          xaxis: axes[0],
          yaxis: axes[1],
          marker: { symbol: this.style.symbols[k] || "x-open", size: 14, color: this.style.marker, line: { width: 2.5 } },
          error_x: { type: "data", symmetric: false, array: e.map((m) => high(m) - m.layer), arrayminus: e.map((m) => m.layer - low(m)), color: this.style.marker, thickness: 1.5, width: 5 },
          name,
          legendgroup: name,
          customdata: e.map((m) => [m.layer, low(m), high(m), m.reached === null ? 1 : m.reached]),
          hovertemplate: "first layer with " + reading.accuracy + " ≥ " + t + ": %{customdata[0]}<br>95% interval %{customdata[1]} to %{customdata[2]}<br>reached in %{customdata[3]:.0%} of resamples<extra></extra>",
          meta: { run: run.index, reading: readingKey(reading.method, reading.target) },
        };
      });
    }

    title(run, reading, key, value) {
      const parts = [reading.caption];
      if (key) parts.push(keyLabel(key));
      if (value !== "accuracy") parts.push(value);
      if (this.runs.length > 1) parts.unshift(run.label);
      return { text: this.data.title + " · " + readingKey(reading.method, reading.target), subtitle: { text: parts.join(" · ") } };
    }

    baseLayout(title, layers, height) {
      return {
        template: "plotly_white",
        title,
        width: Math.max(600, 30 * (layers + 1) + 300),
        height,
        margin: { t: 100, b: 90, l: 70, r: 30 },
        legend: { orientation: "h", yref: "container", yanchor: "bottom", y: 0.0, x: 0 },
        hoverlabel: { align: "left" },
      };
    }

    heatmapFigure() {
      const s = this.state;
      const run = this.runs[s.run];
      const reading = run.byReading.get(s.reading);
      const rows = this.rowsOf(run, s.reading, s.breakdown);
      const { trace, pivot: p } = this.heatTrace(run, reading, rows, s.value, ["x", "y"], "coloraxis", s.reading);
      const traces = [trace];
      if (s.value === "accuracy") traces.push(...this.markers(run, reading, s.breakdown, ["x", "y"], p.scales));
      const layout = this.baseLayout(this.title(run, reading, s.breakdown, s.value), p.layers.length, Math.max(380, 200 + 70 * p.scales.length));
      const label = s.value === "accuracy" ? reading.accuracy : s.value;
      layout.coloraxis = Object.assign(colours(p.z, this.style.colorscale), { colorbar: { title: { text: label } } });
      layout.xaxis = { title: { text: "layer" }, dtick: p.layers.length <= 33 ? 1 : undefined, range: [-0.5, Math.max(...p.layers) + 0.5] };
      layout.yaxis = { title: { text: "Digit Scale" }, type: "category" };
      const sel = s.selected;
      if (sel && sel.run === s.run && sel.reading === s.reading) {
        const y = p.scales.indexOf(sel.scale);
        layout.shapes = [{ type: "rect", x0: sel.layer - 0.5, x1: sel.layer + 0.5, y0: y - 0.5, y1: y + 0.5, line: { color: "#000", width: 2 } }];
      }
      return { traces, layout };
    }

    linesFigure() {
      const s = this.state;
      const run = this.runs[s.run];
      const reading = run.byReading.get(s.reading);
      const rows = this.rowsOf(run, s.reading, s.breakdown);
      const p = pivot(rows, s.value);
      const palette = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52"];
      const traces = [];
      const band = s.value === "accuracy" && rows.some((r) => r.ci_low !== null && r.ci_low !== undefined);
      const meta = { run: run.index, reading: s.reading };
      p.scales.forEach((scale, k) => {
        const cell = rows.filter((r) => r.scale === scale && r[s.value] !== null).sort((a, b) => a.layer - b.layer);
        const colour = palette[k % palette.length];
        if (band) {
          traces.push({
            type: "scatter",
            mode: "lines",
            x: [...cell.map((r) => r.layer), ...cell.map((r) => r.layer).reverse()],
            y: [...cell.map((r) => r.ci_high), ...cell.map((r) => r.ci_low).reverse()],
            fill: "toself",
            fillcolor: colour + "2e",
            line: { width: 0 },
            hoverinfo: "skip",
            showlegend: false,
            legendgroup: String(scale),
          });
        }
        traces.push({
          type: "scatter",
          mode: "lines+markers",
          x: cell.map((r) => r.layer),
          y: cell.map((r) => r[s.value]),
          line: { color: colour },
          name: "scale " + scale,
          legendgroup: String(scale),
          customdata: cell.map((r) => [r.n, r.ci_low, r.ci_high]),
          hovertemplate:
            "scale " + scale + "<br>layer %{x}<br>" + (s.value === "accuracy" ? reading.accuracy : s.value) + " %{y:.3f}<br>n %{customdata[0]:.0f}" +
            (band ? "<br>95% interval %{customdata[1]:.3f} to %{customdata[2]:.3f}" : "") + "<extra></extra>",
          meta: Object.assign({ scale }, meta),
        });
      });
      const layout = this.baseLayout(this.title(run, reading, s.breakdown, s.value), p.layers.length, 480);
      const unit = p.z.flat().every((v) => v === null || (v >= 0 && v <= 1));
      layout.xaxis = { title: { text: "layer" }, dtick: p.layers.length <= 33 ? 1 : undefined };
      layout.yaxis = { title: { text: s.value === "accuracy" ? reading.accuracy : s.value }, range: unit ? [-0.02, 1.02] : undefined };
      return { traces, layout };
    }

    compareFigure() {
      const s = this.state;
      const runA = this.runs[s.run];
      const runB = this.runs[s.runB];
      const readingA = runA.byReading.get(s.reading);
      const readingB = runB.byReading.get(s.readingB);
      const rowsA = this.rowsOf(runA, s.reading, s.breakdown);
      const rowsB = this.rowsOf(runB, s.readingB, s.breakdown);
      const nameA = (this.runs.length > 1 ? runA.label + ": " : "") + s.reading;
      const nameB = (this.runs.length > 1 ? runB.label + ": " : "") + s.readingB;
      const a = this.heatTrace(runA, readingA, rowsA, s.value, ["x", "y"], "coloraxis", "A " + nameA);
      const b = this.heatTrace(runB, readingB, rowsB, s.value, ["x2", "y2"], "coloraxis", "B " + nameB);
      const atB = new Map(rowsB.map((r) => [r.scale + ":" + r.layer, r]));
      const diffRows = [];
      for (const r of rowsA) {
        const o = atB.get(r.scale + ":" + r.layer);
        if (o && r[s.value] !== null && o[s.value] !== null && o[s.value] !== undefined) {
          diffRows.push({ scale: r.scale, layer: r.layer, d: r[s.value] - o[s.value], a: r[s.value], b: o[s.value], n: Math.min(r.n, o.n) });
        }
      }
      const traces = [a.trace, b.trace];
      const layers = Math.max(a.pivot.layers.length, b.pivot.layers.length);
      const scales = [...new Set([...a.pivot.scales, ...b.pivot.scales])].sort((x, y) => x - y);
      if (diffRows.length) {
        const d = pivot(diffRows, "d");
        const custom = d.scales.map((sc) => d.layers.map((l) => {
          const r = d.at.get(sc + ":" + l);
          return r ? [r.a, r.b, r.n] : [null, null, null];
        }));
        traces.push({
          type: "heatmap",
          x: d.layers,
          y: d.scales.map(String),
          z: d.z,
          customdata: custom,
          coloraxis: "coloraxis2",
          xaxis: "x3",
          yaxis: "y3",
          name: "A − B",
          hovertemplate: "layer %{x}<br>digit scale %{y}<br>A − B %{z:.3f}<br>A %{customdata[0]:.3f}<br>B %{customdata[1]:.3f}<br>n %{customdata[2]:.0f}<extra>A − B</extra>",
          meta: { run: runA.index, reading: s.reading },
        });
        setStatus("");
      } else {
        setStatus("The two readings share no cell with " + s.value + " in this breakdown row: no difference to draw.", true);
      }
      const label = s.value === "accuracy" ? "accuracy / flip rate" : s.value;
      const title = { text: this.data.title + " · side by side", subtitle: { text: "A " + nameA + "   vs   B " + nameB + (s.breakdown ? " · " + keyLabel(s.breakdown) : "") + " · " + label } };
      const height = Math.max(720, 3 * (110 + 55 * scales.length) + 160);
      const layout = this.baseLayout(title, layers, height);
      const both = colours([...a.pivot.z, ...b.pivot.z], this.style.colorscale);
      const bound = Math.max(0.05, ...diffRows.map((r) => Math.abs(r.d)));
      layout.coloraxis = Object.assign(both, { colorbar: { title: { text: label }, y: 0.7, len: 0.6 } });
      layout.coloraxis2 = { colorscale: "RdBu", cmin: -bound, cmax: bound, colorbar: { title: { text: "A − B" }, y: 0.14, len: 0.28 } };
      const rows = [[0.72, 1], [0.38, 0.66], [0, 0.28]];
      const maxLayer = Math.max(...a.pivot.layers, ...b.pivot.layers);
      ["", "2", "3"].forEach((k, i) => {
        layout["xaxis" + k] = { anchor: "y" + k, domain: [0, 1], title: { text: i === 2 ? "layer" : "" }, dtick: layers <= 33 ? 1 : undefined, range: [-0.5, maxLayer + 0.5] };
        layout["yaxis" + k] = { anchor: "x" + k, domain: rows[i], type: "category", title: { text: "Digit Scale" }, categoryorder: "array", categoryarray: scales.map(String) };
      });
      layout.annotations = ["A " + nameA, "B " + nameB, "A − B"].map((text, i) => ({
        text, xref: "paper", yref: "paper", x: 0, y: rows[i][1], xanchor: "left", yanchor: "bottom", showarrow: false, font: { size: 13 },
      }));
      return { traces, layout };
    }

    async render() {
      this.syncControls();
      const s = this.state;
      if (s.view !== "compare") setStatus("");
      const { traces, layout } = s.view === "lines" ? this.linesFigure() : s.view === "compare" ? this.compareFigure() : this.heatmapFigure();
      await Plotly.react(this.figure, traces, layout, { displaylogo: false, responsive: false });
      if (!this.bound) {
        this.figure.on("plotly_click", (event) => this.clicked(event));
        this.bound = true;
      }
      this.renderPanel();
      this.figure.dataset.view = s.view;
      document.body.dataset.ready = "1";
    }

    clicked(event) {
      const point = (event.points || []).find((p) => p.data && p.data.meta);
      if (!point) return;
      const meta = point.data.meta;
      const scale = meta.scale !== undefined ? meta.scale : Number(point.y);
      const layer = Math.round(Number(point.x));
      this.state.selected = { run: meta.run, reading: meta.reading, scale, layer };
      if (this.state.view === "heatmap") this.render();
      else this.renderPanel();
    }

    // ---- the example panel ------------------------------------------------------------------------------

    renderPanel() {
      const sel = this.state.selected;
      const panel = this.panel;
      if (!sel) {
        panel.hidden = true;
        panel.replaceChildren();
        return;
      }
      const run = this.runs[sel.run];
      const reading = run.byReading.get(sel.reading);
      const key = this.state.breakdown;
      const el = (tag, text, cls) => {
        const e = document.createElement(tag);
        if (text !== undefined && text !== null) e.textContent = text;
        if (cls) e.className = cls;
        return e;
      };
      const head = el("h2", (this.runs.length > 1 ? run.label + ": " : "") + sel.reading + " · digit scale " + sel.scale + " · layer " + sel.layer);
      const steps = el("span", null, "steps");
      const step = (d, text) => {
        const b = el("button", text);
        b.type = "button";
        b.disabled = sel.layer + d < 0 || sel.layer + d > run.layers;
        b.addEventListener("click", () => {
          sel.layer += d;
          if (this.state.view === "heatmap") this.render();
          else this.renderPanel();
        });
        return b;
      };
      const prev = step(-1, "◀ layer");
      prev.id = "panel-prev";
      const next = step(1, "layer ▶");
      next.id = "panel-next";
      steps.append(prev, " ", next, " ");
      const close = el("button", "close");
      close.type = "button";
      close.id = "panel-close";
      close.addEventListener("click", () => {
        this.state.selected = null;
        this.render();
      });
      steps.append(close);
      const cell = this.rowsOf(run, sel.reading, key).find((r) => r.scale === sel.scale && r.layer === sel.layer);
      const facts = [];
      if (cell) {
        facts.push(reading.accuracy + " " + cell.accuracy.toFixed(3), "n " + cell.n);
        if (cell.ci_low !== null && cell.ci_low !== undefined) facts.push("95% interval " + cell.ci_low.toFixed(3) + " to " + cell.ci_high.toFixed(3));
        for (const c of run.references) if (cell[c] !== null && cell[c] !== undefined) facts.push(c + " " + cell[c].toFixed(3));
      }
      if (key) facts.push(keyLabel(key));
      const examples = run.examples.filter(
        (e) => e.method === reading.method && e.target === reading.target && e.scale === sel.scale && (key === "" || (e.rows || []).includes(key))
      );
      const parts = [steps, head, el("p", facts.join(" · "), "summary")];
      if (!examples.length) {
        const any = run.examples.some((e) => e.method === reading.method && e.target === reading.target);
        parts.push(el("p", any ? "no example problems of this cell among the sample kept for this reading" : "no examples for this reading", "none"));
      } else {
        parts.push(el("p", examples.length + " example problems of this cell (a fixed sample drawn with the seed; " + (cell ? cell.n : "?") + " in the cell)", "summary"));
        parts.push(this.exampleTable(examples, sel.layer, el));
      }
      panel.replaceChildren(...parts);
      panel.hidden = false;
      panel.dataset.method = reading.method;
      panel.dataset.target = reading.target;
      panel.dataset.scale = String(sel.scale);
      panel.dataset.layer = String(sel.layer);
    }

    exampleTable(examples, layer, el) {
      const table = el("table", null, "examples");
      const head = el("tr");
      for (const h of ["problem", "answer", "target", "read at layer " + layer, "", "top tokens (probability) · gold rank", "notes"]) head.append(el("th", h));
      const body = el("tbody");
      const visible = (t) => String(t).replace(/ /g, "␣").replace(/\n/g, "⏎");
      for (const e of examples) {
        const r = e.layers[layer] || {};
        const tr = el("tr");
        tr.className = "example";
        tr.dataset.prompt = e.prompt;
        tr.append(el("td", e.prompt, "mono prompt"), el("td", e.answer, "mono"), el("td", e.gold, "mono gold"));
        tr.append(el("td", r.read === undefined ? "" : visible(r.read), "mono read"));
        tr.append(el("td", r.ok === undefined ? "" : r.ok ? "✓" : "✗", r.ok ? "ok" : "bad"));
        const detail = el("td", null, "tokens");
        for (const position of r.tokens || []) {
          const line = el("span", null, "position");
          for (const [token, p] of position.top) {
            line.append(el("span", visible(token), token === position.gold ? "tok gold" : "tok"), el("span", " " + p.toFixed(3), "p"));
          }
          line.append(el("span", "gold " + visible(position.gold) + " rank " + position.rank, "p"));
          detail.append(line);
        }
        if (r.note) detail.append(el("span", r.note, "note"));
        tr.append(detail);
        tr.append(el("td", Object.entries(e.notes || {}).map(([k, v]) => k + " " + v).join(" · "), "mono notes"));
        body.append(tr);
      }
      const thead = el("thead");
      thead.append(head);
      table.append(thead, body);
      return table;
    }

    // ---- downloads --------------------------------------------------------------------------------------

    slug(text) {
      return text.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "") || "run";
    }

    downloadCsv() {
      const run = this.runs[this.state.run];
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([run.csv], { type: "text/csv" }));
      a.download = this.runs.length > 1 ? this.slug(run.label) + "-grid.csv" : "grid.csv";
      document.body.append(a);
      a.click();
      a.remove();
    }

    downloadImage(format) {
      const s = this.state;
      const name = "accuracy-breakdown-" + this.slug(s.reading + "-" + s.view + (s.breakdown ? "-" + s.breakdown : "") + (s.value !== "accuracy" ? "-" + s.value : ""));
      return Plotly.downloadImage(this.figure, { format, filename: name, scale: format === "png" ? 2 : 1 });
    }
  }

  async function open() {
    if (typeof DecompressionStream === "undefined") {
      setStatus("This browser cannot open the report: it needs DecompressionStream (Chrome or Edge 80, Firefox 113, Safari 16.4 or later).", true);
      return;
    }
    try {
      // performance marks: where the time to open goes (see the browser's performance panel)
      const plotly = inflate("ld-plotly");
      const packed = inflate("ld-data");
      const script = document.createElement("script");
      script.textContent = await plotly;
      performance.mark("ld:plotly unpacked");
      document.head.appendChild(script);
      performance.mark("ld:plotly loaded");
      const data = JSON.parse(await packed);
      performance.mark("ld:data unpacked");
      const report = new Report(data);
      window.lensDigitsReport = report;
      await report.start();
      performance.mark("ld:drawn");
    } catch (error) {
      setStatus("The report could not be opened: " + error, true);
      throw error;
    }
  }

  open();
})();
