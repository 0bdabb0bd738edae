"""What ``reasonlab search`` writes: the table, the scaling plot, and a self-contained HTML report.

- ``table.md`` / ``table.csv`` / ``table.json``: one row per strategy x budget (and the greedy
  baseline): accuracy, mean generated and prompt tokens per problem, generations, scorer calls,
  wall time and the search's overhead (wall time outside generation, scoring and answer reading).
- ``scaling.png``: accuracy against mean generated tokens per problem, one line per strategy (and
  scorer), log-x, the greedy baseline as a dashed line. Drawn with matplotlib's object-oriented API
  on the Agg canvas (no pyplot state, no display needed).
- ``report.html``: one file that opens anywhere, offline: the table, the plot embedded as base64,
  and a tree viewer. Pick a problem (or click a cell of the problem x run grid) and a run, and see
  its search tree: each step's text, score, visits, value, prior and tokens, the chosen path
  highlighted, answers marked right or wrong, pruned branches greyed. Plain HTML and inline
  JavaScript, no CDN; the trees travel inside the page as JSON.

Rows whose scorer reads the gold answer (``mc-rollout``, ``verifier-oracle``) are labelled "uses
gold" everywhere: they measure what a perfect value signal buys, not a deployable method.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasonlab.runtime.rundir import atomic_write_text
from reasonlab.search.base import Node

#: (key, header, format) of the table's columns, in order.
COLUMNS: list[tuple[str, str, str]] = [
    ("strategy", "strategy", "{}"),
    ("budget", "budget", "{}"),
    ("scorer", "scorer", "{}"),
    ("n", "problems", "{}"),
    ("accuracy", "accuracy", "{:.1%}"),
    ("generated_tokens", "gen tokens", "{:.0f}"),
    ("prompt_tokens", "prompt tokens", "{:.0f}"),
    ("generations", "generations", "{:.1f}"),
    ("scorer_calls", "scorer calls", "{:.1f}"),
    ("wall_s", "wall s", "{:.2f}"),
    ("overhead_pct", "overhead %", "{:.1f}"),
]


def scorer_label(row: dict[str, Any]) -> str:
    if not row.get("scorer"):
        return "-"
    return f"{row['scorer']} (uses gold)" if row.get("uses_gold") else row["scorer"]


def cell_text(row: dict[str, Any], key: str, fmt: str) -> str:
    if key == "scorer":
        return scorer_label(row)
    if key == "budget" and row.get("budget") is None:
        return "-"
    value = row.get(key)
    if value is None:
        return "n/a"
    text = fmt.format(value)
    if key == "accuracy" and row.get("unjudged"):
        text += f" ({row['unjudged']} unjudged)"
    return text


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table as GitHub markdown (numbers right-aligned)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    align = "|" + "|".join("---" if k in ("strategy", "scorer") else "---:" for k, _, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(cell_text(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, align, *body]) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    keys = list(rows[0]) if rows else [k for k, _, _ in COLUMNS]
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def print_table(rows: Sequence[dict[str, Any]], title: str = "", console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:  # piped or logged: the markdown table reads (and pastes) better than boxes
        console.print((f"{title}\n\n" if title else "") + markdown_table(rows), markup=False, highlight=False,
                      soft_wrap=True)
        return
    table = Table(title=title or None)
    for key, header, _ in COLUMNS:
        table.add_column(header, justify="left" if key in ("strategy", "scorer") else "right")
    for r in rows:
        table.add_row(*(cell_text(r, k, f) for k, _, f in COLUMNS))
    console.print(table)


# ----------------------------------------------------------------------------------------------
# The scaling plot
# ----------------------------------------------------------------------------------------------

def curve_name(row: dict[str, Any]) -> str:
    return row["strategy"] if not row.get("scorer") else f"{row['strategy']} ({scorer_label(row)})"


def plot_scaling(rows: Sequence[dict[str, Any]], path: Path | None = None, title: str = "") -> bytes:
    """Accuracy vs mean generated tokens per problem, one line per strategy; returns the PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves: dict[str, list[dict[str, Any]]] = {}
    baseline = None
    for r in rows:
        if r.get("accuracy") is None:
            continue
        if r["budget"] is None and r["strategy"] == "greedy":
            baseline = r
        else:
            curves.setdefault(curve_name(r), []).append(r)
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda r: r["generated_tokens"])
        xs = [max(r["generated_tokens"], 1e-9) for r in pts]
        ys = [100 * r["accuracy"] for r in pts]
        line, = ax.plot(xs, ys, marker="o", label=name, linestyle="--" if pts[0].get("uses_gold") else "-")
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(str(r["budget"]), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7,
                        color=line.get_color())
    if baseline is not None:
        ax.axhline(100 * baseline["accuracy"], color="gray", linestyle=":", linewidth=1)
        ax.plot([max(baseline["generated_tokens"], 1e-9)], [100 * baseline["accuracy"]], marker="*",
                markersize=12, color="black", linestyle="none", label="greedy (baseline)")
    ax.set_xscale("log")
    # Plain numbers on the log axis ("200", not "2x10^2"); minor ticks labelled at 2 and 5 only.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if f"{x:e}"[0] in "25" else ""))
    ax.set_xlabel("mean generated tokens per problem (log scale; labels: budget)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy vs tokens")
    ax.grid(True, which="both", alpha=0.3)
    if curves or baseline is not None:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


# ----------------------------------------------------------------------------------------------
# The HTML report
# ----------------------------------------------------------------------------------------------

def compact_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """A tree dict without default-valued fields (the page carries hundreds of trees)."""
    nodes = [{k: v for k, v in n.items() if k in ("id", "parent") or not _is_default(k, v)} for n in tree["nodes"]]
    return {"mode": tree.get("mode", "steps"), "nodes": nodes}


def _is_default(key: str, value: Any) -> bool:
    """Whether a node field holds its dataclass default (a score of 0.0 or correct=False is kept)."""
    default = _NODE_DEFAULTS.get(key, _MISSING)
    return default is not _MISSING and type(value) is type(default) and value == default


_MISSING = object()
_NODE_DEFAULTS: dict[str, Any] = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                                  for f in dataclasses.fields(Node)
                                  if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def report_data(out: Path, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
                meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the page's viewer needs: problems, runs, and per run and problem the result and its tree."""
    examples: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for r in records:
        examples.setdefault(r["example_id"], {"id": r["example_id"], "question": r.get("question", ""),
                                              "answer": r.get("answer")})
        tree_file = out / r["tree"] if r.get("tree") else None
        tree = compact_tree(json.loads(tree_file.read_text())) if tree_file and tree_file.exists() else None
        c = r["compute"]
        results.setdefault(r["label"], {})[r["example_id"]] = {
            "correct": r["correct"], "status": r["status"], "extracted": r["extracted"], "text": r["text"],
            "generated_tokens": c["generated_tokens"], "prompt_tokens": c["prompt_tokens"],
            "generations": c["generations"], "scorer_calls": c["scorer_calls"],
            "wall_s": round(c["wall_time_s"], 3), "tree": tree,
        }
    runs = [{"label": r["label"], "name": curve_name(r) + ("" if r["budget"] is None else f" @ {r['budget']}"),
             "accuracy": r["accuracy"]} for r in rows]
    return {"meta": meta, "examples": list(examples.values()), "runs": runs, "results": results}


def html_report(rows: Sequence[dict[str, Any]], data: dict[str, Any], png: bytes) -> str:
    """The self-contained page (see the module docstring)."""
    meta = data.get("meta", {})
    title = f"reasonlab search: {meta.get('model', '')} on {meta.get('task', '')}"
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td class='{'l' if k in ('strategy', 'scorer') else 'r'}'>{html.escape(cell_text(r, k, f))}</td>"
                         for k, _, f in COLUMNS) + "</tr>" for r in rows)
    gold_note = ("<p class='note'>Rows marked <b>uses gold</b> are guided by a scorer that reads the gold answer "
                 "(mc-rollout: Math-Shepherd's rollout value; verifier-oracle): an upper bound, not a deployable "
                 "method.</p>") if any(r.get("uses_gold") for r in rows) else ""
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    img = base64.b64encode(png).decode("ascii")
    info = html.escape(", ".join(f"{k}: {v}" for k, v in meta.items()))
    return _PAGE.format(title=html.escape(title), info=info, head=head, body=body, gold_note=gold_note,
                        img=img, payload=payload, style=_STYLE, script=_SCRIPT)


def write_all(out: Path, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
              meta: dict[str, Any]) -> None:
    """Write table.md/.csv/.json, scaling.png and report.html into ``out``."""
    out = Path(out)
    atomic_write_text(out / "table.md", markdown_table(rows))
    write_csv(rows, out / "table.csv")
    atomic_write_text(out / "table.json", json.dumps({"meta": meta, "rows": list(rows)}, indent=2) + "\n")
    png = plot_scaling(rows, out / "scaling.png", title=f"{meta.get('model', '')} on {meta.get('task', '')}")
    atomic_write_text(out / "report.html", html_report(rows, report_data(out, rows, records, meta), png))


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em} .info,.note{color:#555;font-size:.9em}
table.t{border-collapse:collapse;font-size:.88em} table.t th,table.t td{border:1px solid #ddd;padding:3px 8px}
table.t th{background:#f4f4f4} td.r{text-align:right} td.l{text-align:left}
img.plot{max-width:100%;border:1px solid #eee}
#grid{overflow:auto;max-height:260px;font-size:.8em;margin:8px 0} #grid td{cursor:pointer;text-align:center;min-width:22px}
#grid td.ok{background:#dff3df} #grid td.bad{background:#f8dede} #grid td.na{background:#eee}
#grid td.sel{outline:2px solid #36c} #grid th{position:sticky;top:0;background:#fafafa;font-weight:normal}
.controls select{max-width:48%;margin-right:8px} #summary{margin:10px 0;padding:8px;background:#f8f8fb;font-size:.9em}
#summary pre{white-space:pre-wrap;margin:4px 0}
ul.tree{list-style:none;padding-left:18px;margin:0;border-left:1px dotted #ccc} ul.tree.root{border-left:none;padding-left:0}
.node{margin:2px 0} .step{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;background:#f6f6f6;
padding:1px 4px;border-radius:3px} .chosen>.row .step{background:#fff2b3;font-weight:600} .pruned>.row{opacity:.45}
.stats{color:#666;font-size:.82em;margin-left:6px} .mark-ok{color:#0a0;font-weight:bold} .mark-bad{color:#c00;font-weight:bold}
.ans{font-size:.85em;margin-left:6px} .toggle{cursor:pointer;color:#36c;font-size:.8em;margin-right:4px;user-select:none}
"""

_SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
const probSel = document.getElementById('problem'), runSel = document.getElementById('run');
const onlyChosen = document.getElementById('only-chosen');
function el(tag, cls, text){const e=document.createElement(tag); if(cls) e.className=cls; if(text!==undefined) e.textContent=text; return e;}
function fmt(x){return (typeof x==='number') ? (Number.isInteger(x)? String(x) : x.toFixed(3)) : String(x);}
DATA.examples.forEach((ex,i)=>{const o=el('option',null,ex.id+'  —  '+(ex.question||'').slice(0,80)); o.value=ex.id; probSel.appendChild(o);});
DATA.runs.forEach(r=>{const o=el('option',null,r.name); o.value=r.label; runSel.appendChild(o);});
function buildGrid(){
  const g=document.getElementById('grid'); const t=el('table','t'); const hr=el('tr'); hr.appendChild(el('th',null,'problem'));
  DATA.runs.forEach(r=>hr.appendChild(el('th',null,r.label))); t.appendChild(hr);
  DATA.examples.forEach(ex=>{const tr=el('tr'); tr.appendChild(el('td',null,ex.id));
    DATA.runs.forEach(r=>{const res=(DATA.results[r.label]||{})[ex.id];
      const td=el('td', !res?'na':(res.correct===true?'ok':(res.correct===false?'bad':'na')), !res?'':(res.correct===true?'✓':(res.correct===false?'✗':'?')));
      td.dataset.ex=ex.id; td.dataset.run=r.label; td.title=r.label+' / '+ex.id;
      td.onclick=()=>{probSel.value=ex.id; runSel.value=r.label; show();}; tr.appendChild(td);});
    t.appendChild(tr);});
  g.appendChild(t);
}
function nodeRow(n){
  const row=el('div','row');
  const text=(n.text||'').replace(/\n/g,'⏎\n');
  row.appendChild(el('span','step', n.parent===null ? '(prompt)' : (text || '(empty)')));
  const s=[];
  if(n.score!==undefined) s.push('score '+fmt(n.score));
  if(n.visits) s.push('N '+n.visits);
  if(n.value) s.push('Q '+fmt(n.value));
  if(n.prior!==undefined) s.push('P '+fmt(n.prior));
  if(n.tokens) s.push(n.tokens+' tok');
  if(n.terminal) s.push('end'+(n.meta&&n.meta.end?' ('+n.meta.end+')':''));
  if(n.meta){for(const k of ['votes','allotted','pruned','rollouts']){ if(n.meta[k]!==undefined) s.push(k+' '+(typeof n.meta[k]==='object'?JSON.stringify(n.meta[k]).slice(0,80):fmt(n.meta[k])));}}
  if(s.length) row.appendChild(el('span','stats',s.join(' · ')));
  if(n.extracted!==undefined){const a=el('span','ans','answer '+n.extracted+' '); row.appendChild(a);
    if(n.correct===true) a.appendChild(el('span','mark-ok','✓')); else if(n.correct===false) a.appendChild(el('span','mark-bad','✗'));}
  return row;
}
function renderTree(tree){
  const kids={}; tree.nodes.forEach(n=>{ if(n.parent!==null && n.parent!==undefined){(kids[n.parent]=kids[n.parent]||[]).push(n);} });
  function sub(n){
    const li=el('li','node'+(n.chosen?' chosen':'')+(n.meta&&n.meta.pruned?' pruned':''));
    const row=nodeRow(n); li.appendChild(row);
    let cs=kids[n.id]||[]; if(onlyChosen.checked) cs=cs.filter(c=>c.chosen);
    if(cs.length){const ul=el('ul','tree'); cs.forEach(c=>ul.appendChild(sub(c)));
      const tg=el('span','toggle','▾'); tg.onclick=()=>{const hid=ul.style.display==='none'; ul.style.display=hid?'':'none'; tg.textContent=hid?'▾':'▸';};
      row.insertBefore(tg,row.firstChild); li.appendChild(ul);}
    return li;
  }
  const ul=el('ul','tree root'); ul.appendChild(sub(tree.nodes[0])); return ul;
}
function show(){
  const ex=DATA.examples.find(e=>e.id===probSel.value), res=(DATA.results[runSel.value]||{})[probSel.value];
  const sm=document.getElementById('summary'), tv=document.getElementById('tree'); sm.innerHTML=''; tv.innerHTML='';
  document.querySelectorAll('#grid td.sel').forEach(td=>td.classList.remove('sel'));
  document.querySelectorAll('#grid td').forEach(td=>{ if(td.dataset.ex===probSel.value && td.dataset.run===runSel.value) td.classList.add('sel');});
  if(!ex){return;}
  sm.appendChild(el('div',null,'problem '+ex.id+': '+(ex.question||'')+'   gold answer: '+ex.answer));
  if(!res){sm.appendChild(el('div',null,'this run has no result for this problem')); return;}
  const v=res.correct===true?'right':(res.correct===false?'wrong':'not judged ('+res.status+')');
  sm.appendChild(el('div',null,'chosen answer: '+res.extracted+' — '+v+' · '+res.generated_tokens+' generated tokens, '+
    res.prompt_tokens+' prompt tokens, '+res.generations+' generations, '+res.scorer_calls+' scorer calls, '+res.wall_s+' s'));
  sm.appendChild(el('pre',null,res.text));
  if(res.tree){tv.appendChild(el('div','note',res.tree.nodes.length+' nodes ('+res.tree.mode+' tree); highlighted: the chosen path; greyed: pruned; ✓/✗: answer right/wrong'));
    tv.appendChild(renderTree(res.tree));}
}
probSel.onchange=show; runSel.onchange=show; onlyChosen.onchange=show;
buildGrid(); if(DATA.runs.length){ runSel.value=DATA.runs[DATA.runs.length-1].label; } show();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
<p class="info">{info}</p>
<h2>Accuracy against compute</h2>
<p class="note">Per problem, averaged: generated tokens include scorer rollouts; overhead is the share of wall time
outside generation, scoring and answer reading.</p>
<table class="t"><tr>{head}</tr>{body}</table>
{gold_note}
<img class="plot" alt="scaling plot" src="data:image/png;base64,{img}">
<h2>Search trees</h2>
<div id="grid"></div>
<div class="controls"><select id="problem"></select><select id="run"></select>
<label><input type="checkbox" id="only-chosen"> chosen path only</label></div>
<div id="summary"></div>
<div id="tree"></div>
<script type="application/json" id="data">{payload}</script>
<script>{script}</script>
</body></html>
"""
