/* diffusion-align gallery: draws the summary, the grid and the labelling view from the inline JSON.
   Every string from the data enters the page as text (textContent, attribute values), never as markup. */
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("gallery-data").textContent);
  const $ = (id) => document.getElementById(id);
  const models = data.models.map((m) => m.name);
  const state = { reward: data.best_by || data.rewards[0] || "", sort: "order", category: "", min: null, search: "" };

  function node(tag, props, children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") element.textContent = value;
      else if (key === "className") element.className = value;
      else if (key === "dataset") Object.assign(element.dataset, value);
      else element.setAttribute(key, value);
    }
    for (const child of children || []) if (child) element.appendChild(child);
    return element;
  }

  const fmt = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(3));

  // rows of the grid: one per (prompt, seed), cells in column order
  const rows = [];
  const rowByKey = new Map();
  for (const cell of data.cells) {
    const key = cell.prompt + ":" + cell.seed;
    if (!rowByKey.has(key)) {
      const row = { prompt: cell.prompt, seed: cell.seed, cells: [] };
      rowByKey.set(key, row);
      rows.push(row);
    }
    rowByKey.get(key).cells.push(cell);
  }
  rows.sort((a, b) => a.prompt - b.prompt || a.seed - b.seed);
  for (const row of rows) row.cells.sort((a, b) => models.indexOf(a.model) - models.indexOf(b.model));

  const score = (cell, reward) => (reward ? cell.scores[reward] : undefined);
  const rowValues = (row) => row.cells.map((cell) => score(cell, state.reward)).filter((v) => v !== undefined);
  const rowBest = (row) => Math.max(...rowValues(row));

  /* The cells holding the row's highest score; none when every cell ties (as gallery/build.py). */
  function bestCells(row) {
    const values = rowValues(row);
    if (values.length < 2 || Math.max(...values) === Math.min(...values)) return new Set();
    return new Set(row.cells.filter((cell) => score(cell, state.reward) === Math.max(...values)));
  }

  // --- header, summary, runs and plots ------------------------------------------------------

  function renderSettings() {
    const s = data.settings;
    const seeds = s.seeds.length > 1 ? `seeds ${s.seeds[0]}–${s.seeds[s.seeds.length - 1]}` : `seed ${s.seeds[0]}`;
    $("settings").textContent =
      `${data.prompts.length} prompts × ${seeds} × ${models.length} models · ` +
      `${s.num_steps} steps · guidance ${s.guidance_scale} · built ${data.created}`;
  }

  function renderSummary() {
    const hasAccuracy = data.summary.some((row) => row.accuracy !== null && row.accuracy !== undefined);
    const wins = new Map(models.map((m) => [m, 0]));
    for (const row of rows) for (const cell of bestCells(row)) wins.set(cell.model, wins.get(cell.model) + 1);
    const columns = [["model", (row) => row.model, false], ["images", (row) => row.num_images, false]];
    if (hasAccuracy) columns.push(["toy accuracy", (row) => row.accuracy, true]);
    for (const reward of data.rewards) columns.push([reward, (row) => row.rewards[reward], true]);
    columns.push([`best cells (${state.reward || "no reward"})`, (row) => wins.get(row.model), false]);
    const table = $("summary-table");
    table.replaceChildren(node("tr", {}, columns.map(([name]) => node("th", { text: name }))));
    for (const row of data.summary) {
      const cells = columns.map(([, value, number]) => {
        const v = value(row);
        const all = data.summary.map(value);
        const top = number && v !== null && Math.max(...all) !== Math.min(...all) && v === Math.max(...all);
        return node("td", { text: number ? fmt(v) : String(v), className: top ? "top" : "" });
      });
      const config = data.models[models.indexOf(row.model)].config;
      cells[0].title = JSON.stringify(config, null, 1);
      table.appendChild(node("tr", { dataset: { model: row.model } }, cells));
    }
  }

  function renderRuns() {
    if (!data.runs.length && !data.plots.length) return;
    $("runs").hidden = false;
    const table = $("runs-table");
    table.replaceChildren(node("tr", {}, ["run", "stage", "accuracy", "rewards"].map((t) => node("th", { text: t }))));
    for (const run of data.runs) {
      for (const [stage, summary] of Object.entries(run.summary || {})) {
        const rewards = Object.entries(summary.rewards || {}).map(([k, v]) => `${k} ${fmt(v)}`).join("  ");
        table.appendChild(node("tr", {}, [run.name, stage, fmt(summary.accuracy), rewards].map((t) => node("td", { text: t }))));
      }
    }
    for (const plot of data.plots) {
      $("plots").appendChild(
        node("figure", { className: "plot" }, [node("img", { src: plot.image, alt: `reward curve: ${plot.reward}` })])
      );
    }
  }

  // --- controls and grid --------------------------------------------------------------------

  function option(value, text) {
    return node("option", { value, text });
  }

  function renderControls() {
    const reward = $("reward-select");
    reward.replaceChildren(...data.rewards.map((r) => option(r, r)));
    reward.value = state.reward;
    const sort = $("sort-select");
    sort.replaceChildren(
      option("order", "prompt order"),
      option("best-desc", "best score, high → low"),
      option("best-asc", "best score, low → high"),
      option("spread", "gap between models, large → small"),
      ...models.map((m, i) => option(`model:${i}`, `${m}, high → low`))
    );
    const categories = [...new Set(data.prompts.map((p) => p.category))];
    $("category-select").replaceChildren(option("", "all"), ...categories.map((c) => option(c, c)));
    reward.addEventListener("change", () => { state.reward = reward.value; renderSummary(); renderGrid(); });
    sort.addEventListener("change", () => { state.sort = sort.value; renderGrid(); });
    $("category-select").addEventListener("change", (e) => { state.category = e.target.value; renderGrid(); });
    $("min-score").addEventListener("input", (e) => {
      state.min = e.target.value === "" ? null : Number(e.target.value);
      renderGrid();
    });
    $("search").addEventListener("input", (e) => { state.search = e.target.value.toLowerCase(); renderGrid(); });
  }

  function visibleRows() {
    const shown = rows.filter((row) => {
      const prompt = data.prompts[row.prompt];
      if (state.category && prompt.category !== state.category) return false;
      if (state.search && !prompt.text.toLowerCase().includes(state.search)) return false;
      return state.min === null || rowBest(row) >= state.min;
    });
    const spread = (row) => rowBest(row) - Math.min(...rowValues(row));
    const keys = {
      order: null,
      "best-desc": (row) => -rowBest(row),
      "best-asc": (row) => rowBest(row),
      spread: (row) => -spread(row),
    };
    let key = keys[state.sort];
    if (state.sort.startsWith("model:")) {
      const column = Number(state.sort.slice(6));
      key = (row) => -score(row.cells[column], state.reward);
    }
    return key ? shown.sort((a, b) => key(a) - key(b) || a.prompt - b.prompt || a.seed - b.seed) : shown;
  }

  function checkLine(checks) {
    if (!checks) return null;
    const failed = Object.entries(checks.constraints).filter(([, ok]) => !ok).map(([name]) => name);
    const text = checks.all ? "✓ all constraints" : `✗ ${failed.join(", ")}`;
    return node("li", { text, className: checks.all ? "check pass" : "check fail" });
  }

  function renderCell(cell, best) {
    const scores = data.rewards.map((reward) =>
      node("li", { className: reward === state.reward ? "score selected" : "score", dataset: { reward } }, [
        node("span", { className: "name", text: reward }),
        node("span", { className: "value", text: fmt(cell.scores[reward]) }),
      ])
    );
    const image = node("img", { className: "thumb", src: cell.image, alt: `${cell.model}, seed ${cell.seed}` });
    image.addEventListener("click", () => openModal(cell));
    return node(
      "td",
      { className: best ? "cell best" : "cell", dataset: { model: cell.model, prompt: cell.prompt, seed: cell.seed } },
      [
        best ? node("span", { className: "badge", text: "best" }) : null,
        image,
        node("ul", { className: "scores" }, [...scores, checkLine(cell.checks)]),
      ]
    );
  }

  function renderGrid() {
    const table = $("grid");
    table.replaceChildren(
      node("tr", {}, [node("th", { text: "prompt" }), ...models.map((m) => node("th", { text: m, className: "model" }))])
    );
    const shown = visibleRows();
    for (const row of shown) {
      const prompt = data.prompts[row.prompt];
      const best = bestCells(row);
      const header = node("th", { className: "prompt" }, [
        node("div", { className: "prompt-text", text: prompt.text }),
        node("div", { className: "meta", text: `${prompt.category} · seed ${row.seed}` }),
      ]);
      const cells = row.cells.map((cell) => renderCell(cell, best.has(cell)));
      table.appendChild(node("tr", { className: "row", dataset: { prompt: row.prompt, seed: row.seed } }, [header, ...cells]));
    }
    $("row-count").textContent = `${shown.length} of ${rows.length} rows`;
  }

  // --- enlarge --------------------------------------------------------------------------------

  function openModal(cell) {
    $("modal-image").src = cell.image;
    const lines = [
      node("p", { className: "prompt-text", text: data.prompts[cell.prompt].text }),
      node("p", { text: `${cell.model} · seed ${cell.seed} · ${cell.image}` }),
      node("ul", { className: "scores" }, [
        ...data.rewards.map((r) => node("li", { text: `${r}: ${fmt(cell.scores[r])}` })),
        checkLine(cell.checks),
      ]),
    ];
    $("modal-caption").replaceChildren(...lines);
    $("modal").hidden = false;
  }

  function closeModal() {
    $("modal").hidden = true;
  }

  $("modal-close").addEventListener("click", closeModal);
  $("modal").addEventListener("click", (e) => { if (e.target === $("modal")) closeModal(); });

  // --- labelling ------------------------------------------------------------------------------

  /* Pairs of the same prompt: every two models at one seed, or (one model) consecutive seeds.
     Sides alternate so that no model always sits on the left. */
  function buildPairs() {
    const pairs = [];
    if (models.length > 1) {
      for (const row of rows)
        for (let i = 0; i < row.cells.length; i++)
          for (let j = i + 1; j < row.cells.length; j++) pairs.push([row.cells[i], row.cells[j]]);
    } else {
      for (let k = 1; k < rows.length; k++)
        if (rows[k].prompt === rows[k - 1].prompt) pairs.push([rows[k - 1].cells[0], rows[k].cells[0]]);
    }
    return pairs.map((pair, k) => (k % 2 ? [pair[1], pair[0]] : pair));
  }

  const pairs = buildPairs();
  const storageKey = `diffusion-align-gallery:${data.root}:${data.created}`;
  const choices = new Map(); // pair index -> 0 (left better) or 1 (right better)
  const history = [];
  let position = 0;

  function save() {
    try {
      localStorage.setItem(storageKey, JSON.stringify([...choices]));
    } catch (error) {
      /* storage may be off for file:// pages; choices then live until the page closes */
    }
  }

  function restore() {
    try {
      for (const [index, side] of JSON.parse(localStorage.getItem(storageKey) || "[]"))
        if (index < pairs.length) choices.set(index, side);
    } catch (error) {
      /* nothing stored, or storage off */
    }
    while (position < pairs.length && choices.has(position)) position++;
  }

  function renderPair() {
    $("label-progress").textContent = pairs.length
      ? `${choices.size} of ${pairs.length} pairs labelled`
      : "Labelling needs two models, or two seeds of one model.";
    const pair = pairs[position];
    $("pair").hidden = !pair;
    if (!pair) {
      if (pairs.length) $("label-progress").textContent += " · end of the pairs: export below";
      return;
    }
    const showNames = $("show-models").checked;
    $("pair-prompt").textContent = data.prompts[pair[0].prompt].text;
    ["left", "right"].forEach((side, i) => {
      $(`pair-${side}`).src = pair[i].image;
      $(`pair-${side}-name`).textContent = showNames ? `${pair[i].model} · seed ${pair[i].seed}` : `image ${"AB"[i]}`;
    });
  }

  function choose(side) {
    if (position >= pairs.length) return;
    if (side !== null) choices.set(position, side);
    history.push(position);
    position++;
    save();
    renderPair();
  }

  function undo() {
    if (!history.length) return;
    position = history.pop();
    choices.delete(position);
    save();
    renderPair();
  }

  function absolutePath(relative) {
    if (location.protocol === "file:") return decodeURIComponent(new URL(relative, location.href).pathname);
    return `${data.root}/${relative}`;
  }

  function preferenceLines() {
    return [...choices.entries()].sort((a, b) => a[0] - b[0]).map(([index, side]) => {
      const chosen = pairs[index][side];
      const rejected = pairs[index][1 - side];
      return JSON.stringify({
        prompt: data.prompts[chosen.prompt].text,
        chosen: chosen.image,
        rejected: rejected.image,
        chosen_path: absolutePath(chosen.image),
        rejected_path: absolutePath(rejected.image),
        chosen_model: chosen.model,
        rejected_model: rejected.model,
        chosen_seed: chosen.seed,
        rejected_seed: rejected.seed,
        source: "human",
      });
    });
  }

  function exportPreferences() {
    const lines = preferenceLines();
    const text = lines.length ? lines.join("\n") + "\n" : "";
    $("export-text").value = text;
    const link = node("a", { download: "preferences.jsonl" });
    link.href = URL.createObjectURL(new Blob([text], { type: "application/jsonl" }));
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  $("choose-left").addEventListener("click", () => choose(0));
  $("choose-right").addEventListener("click", () => choose(1));
  $("skip").addEventListener("click", () => choose(null));
  $("undo").addEventListener("click", undo);
  $("export").addEventListener("click", exportPreferences);
  $("show-models").addEventListener("change", renderPair);
  $("clear-labels").addEventListener("click", () => {
    choices.clear();
    history.length = 0;
    position = 0;
    save();
    renderPair();
  });

  function showView(name) {
    $("view-grid").hidden = name !== "grid";
    $("view-label").hidden = name !== "label";
    $("tab-grid").classList.toggle("active", name === "grid");
    $("tab-label").classList.toggle("active", name === "label");
  }

  $("tab-grid").addEventListener("click", () => showView("grid"));
  $("tab-label").addEventListener("click", () => showView("label"));

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") return closeModal();
    if ($("view-label").hidden || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    const actions = { 1: () => choose(0), ArrowLeft: () => choose(0), 2: () => choose(1), ArrowRight: () => choose(1), s: () => choose(null), u: undo };
    if (actions[e.key]) {
      e.preventDefault();
      actions[e.key]();
    }
  });

  renderSettings();
  renderControls();
  renderSummary();
  renderRuns();
  renderGrid();
  restore();
  renderPair();
  document.body.dataset.ready = "true";
})();
