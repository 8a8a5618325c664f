// freshrank's live dashboard: polls /api/dashboard once a second and redraws.
"use strict";

const REFRESH_MS = 1000;
const COLORS = { blue: "#4ea1ff", green: "#3fcf8e", red: "#ff5c5c", orange: "#ffa940", violet: "#b48cff", muted: "#8593a3" };
const MARK = { live: COLORS.green, rejected: COLORS.red, rolled_back: COLORS.orange, hold: COLORS.violet, failed: COLORS.red };
let timeline = [];

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 0) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }));
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

// Vertical lines where versions went live (green), were rejected (red), rolled back (orange), held (violet).
function versionMarks() {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx, { top, height } = u.bbox;
        const [lo, hi] = [u.scales.x.min, u.scales.x.max];
        ctx.save();
        ctx.lineWidth = 1.5 * devicePixelRatio;
        for (const e of timeline) {
          const color = MARK[e.kind];
          if (!color || e.at < lo || e.at > hi) continue;
          const x = Math.round(u.valToPos(e.at, "x", true));
          ctx.strokeStyle = color;
          ctx.setLineDash(e.kind === "live" ? [] : [4, 4]);
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
          if (e.kind === "live" || e.kind === "rolled_back") {
            ctx.fillStyle = color;
            ctx.font = `${11 * devicePixelRatio}px system-ui`;
            ctx.fillText(`v${e.kind === "rolled_back" ? e.served ?? e.version : e.version}`, x + 3, top + 12 * devicePixelRatio);
          }
        }
        ctx.restore();
      }],
    },
  };
}

function chart(el, series, opts = {}) {
  const width = el.clientWidth || 600;
  const axis = { stroke: COLORS.muted, grid: { stroke: "#263040", width: 1 }, ticks: { stroke: "#263040" } };
  const u = new uPlot({
    width, height: 200,
    plugins: opts.marks ? [versionMarks()] : [],
    scales: { x: { time: true }, y: opts.y || {} },
    axes: [axis, { ...axis, size: 56 }],
    legend: { live: false },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.6, spanGaps: true, points: { show: false } }))],
  }, [[], ...series.map(() => [])], el);
  return u;
}

const charts = {
  rates: chart($("chart-rates"), [["events/s", COLORS.blue], ["samples/s", COLORS.green], ["dead letters/s", COLORS.orange]]),
  lag: chart($("chart-lag"), [["records behind", COLORS.blue]], { y: { range: (u, lo, hi) => [0, Math.max(10, hi * 1.1)] } }),
  auc: chart($("chart-auc"), [["prequential", COLORS.blue], ["held-out (served)", COLORS.green]], { marks: true, y: { range: (u, lo, hi) => [Math.max(0, Math.min(0.5, lo ?? 0.5)), Math.min(1, Math.max(hi ?? 1, 0.6))] } }),
  fresh: chart($("chart-fresh"), [["p50", COLORS.green], ["p95", COLORS.orange], ["p99", COLORS.red]], { marks: true }),
};

function bars(el, entries, cls) {
  const max = Math.max(1, ...entries.map(([, n]) => n));
  el.replaceChildren(...(entries.length ? entries.map(([name, n]) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.name = name;
    row.innerHTML = `<span></span><div class="track"><div class="fill"></div></div><span></span>`;
    row.children[0].textContent = name;
    row.querySelector(".fill").style.width = `${(100 * n) / max}%`;
    row.children[2].textContent = fmt(n);
    return row;
  }) : [Object.assign(document.createElement("div"), { className: "empty", textContent: cls })]));
}

function render(d) {
  const s = d.series, now = d.now;
  const last = (name) => { const col = s[name]; for (let i = col.length - 1; i >= 0; i--) if (col[i] !== null) return col[i]; return null; };
  timeline = d.timeline;
  $("events-per-s").textContent = fmt(last("events_per_s"));
  $("events-consumed").textContent = `${fmt(now.events_consumed)} consumed`;
  $("events-consumed").dataset.value = now.events_consumed;
  $("lag").textContent = fmt(now.consumer_lag);
  $("samples-trained").textContent = fmt(now.samples_trained);
  $("samples-trained").dataset.value = now.samples_trained;
  $("samples-per-s").textContent = `${fmt(last("samples_per_s"))} / s`;
  $("served-version").textContent = now.served_version ?? "–";
  $("versions").textContent = `${fmt(now.versions_published)} published · ${fmt(now.versions_rejected)} rejected · ${fmt(now.rollbacks)} rolled back`;
  $("holdout-auc").textContent = fmt(now.holdout_auc, 3);
  $("prequential-auc").textContent = `prequential ${fmt(now.prequential_auc, 3)}`;
  $("freshness").textContent = now.freshness_p50_s === null ? "–" : `${fmt(now.freshness_p50_s, 1)} / ${fmt(now.freshness_p95_s, 1)} s`;
  $("dead-letters").textContent = fmt(now.dead_letters);
  $("dead-rate").textContent = `${fmt(last("dead_letters_per_s"), 1)} / s`;
  const mode = now.serving && now.serving.mode;
  $("serving").textContent = mode && mode !== "latest" ? `serving ${mode} at ${now.serving.version}` : (now.held ? "serving held (deltas stopped)" : "serving the latest");
  $("deps").replaceChildren(...Object.entries(d.dependencies).map(([name, ok]) =>
    Object.assign(document.createElement("span"), { className: `dep ${ok === false ? "down" : "ok"}`, textContent: name })));
  $("updated").textContent = `updated ${clock(now.updated_at)} · ${now.device}${now.group ? ` · rank ${now.group.rank} of ${now.group.world_size}` : ""}`;

  charts.rates.setData([s.t, s.events_per_s, s.samples_per_s, s.dead_letters_per_s]);
  charts.lag.setData([s.t, s.lag]);
  charts.auc.setData([s.t, s.prequential_auc, s.holdout_auc]);
  charts.fresh.setData([s.t, s.freshness_p50_s, s.freshness_p95_s, s.freshness_p99_s]);

  const items = d.timeline.slice().reverse().slice(0, 100).map((e) => {
    const li = document.createElement("li");
    li.className = `kind-${e.kind}`;
    li.dataset.kind = e.kind;
    li.innerHTML = "<span></span><span></span><span></span><span class='muted'></span>";
    li.children[0].textContent = clock(e.at);
    li.children[1].textContent = e.kind.replace("_", " ");
    li.children[2].textContent = e.version === null ? "" : `v${e.version}`;
    li.children[3].textContent = e.reason || "";
    return li;
  });
  $("timeline").replaceChildren(...(items.length ? items : [Object.assign(document.createElement("li"), { className: "empty", textContent: "no version yet" })]));
  bars($("dead-reasons"), Object.entries(d.dead_letters_by_reason).sort((a, b) => b[1] - a[1]), "no dead letters");
  bars($("partitions"), Object.entries(d.lag_by_partition).sort(), "no partition assigned yet");
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
}

async function refresh() {
  try {
    const response = await fetch("api/dashboard", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const d = await response.json();
    if (d.waiting) {
      $("state").textContent = d.waiting;
      $("state").className = "pill";
      return;
    }
    render(d);
    $("state").textContent = "live";
    $("state").className = "pill ok";
  } catch (err) {
    $("state").textContent = `unreachable: ${err.message}`;
    $("state").className = "pill bad";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

window.addEventListener("resize", () => {
  for (const u of Object.values(charts)) u.setSize({ width: u.root.parentElement.clientWidth, height: 200 });
});
refresh();
