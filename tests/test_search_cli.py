"""``reasonlab search`` end to end on ``tiny``: 2 strategies x 2 budgets x 4 problems plus the greedy baseline.

Checks the run directory (results, trees, table, plot, report), that the numbers in the table are the
records' numbers, that every budget held, that resuming does only the missing work, that the report's
tree viewer really renders a tree (run in node with a minimal DOM when node is installed), and that
bad names fail fast with exit code 2.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reasonlab.cli.main import main
from reasonlab.search import Tree
from reasonlab.tasks import load_task

ARGS = ["--model", "tiny", "--task", "arith", "--strategies", "sc,beam", "--budgets", "64,128", "--limit", "4",
        "--max-new-tokens", "40", "--separator", r"\n", "--max-step-tokens", "16", "--max-steps", "6",
        "--options", "{beam: {beams: 2, width: 2}}", "--device", "cpu", "--threads", "1"]
LABELS = ["greedy", "sc@64", "sc@128", "beam@64", "beam@128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", *ARGS, "--out", str(out)]) == 0
    yield out
    torch.set_num_threads(threads)


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_results_table_and_budgets(run):
    recs = records(run)
    assert len(recs) == len(LABELS) * 4
    assert sorted({r["label"] for r in recs}) == sorted(LABELS)
    task = load_task("arith")
    examples = {e.id: e for e in task.examples(limit=4)}
    for r in recs:  # judged independently of the runner
        assert r["correct"] == task.score(examples[r["example_id"]], r["text"]).correct
        if r["budget"] is not None:
            assert 0 < r["compute"]["generated_tokens"] <= r["budget"]
    rows = {row["label"]: row for row in json.loads((run / "table.json").read_text())["rows"]}
    assert list(rows) == LABELS
    for label, row in rows.items():
        mine = [r for r in recs if r["label"] == label]
        assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / 4)
        assert row["generated_tokens"] == pytest.approx(sum(r["compute"]["generated_tokens"] for r in mine) / 4)
        assert 0 <= row["overhead_pct"] < 100
    assert rows["beam@64"]["scorer"] == "confidence" and rows["sc@64"]["scorer"] is None
    assert rows["sc@128"]["generated_tokens"] > rows["sc@64"]["generated_tokens"] > rows["greedy"]["generated_tokens"]
    md = (run / "table.md").read_text().splitlines()
    assert len(md) == 2 + len(LABELS) and md[3].startswith("| sc | 64 |") and "confidence" in md[5]
    assert len((run / "table.csv").read_text().splitlines()) == 1 + len(LABELS)
    assert (run / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trees_load_back_with_marks(run):
    for r in records(run):
        tree = Tree.from_json((run / r["tree"]).read_text())
        assert r["tree"].startswith("trees/" + ("greedy/" if r["budget"] is None else f"{r['strategy']}-{r['budget']}/"))
        path = tree.chosen_path()
        assert path[0] == 0 and tree.solution(path[-1]) == r["text"] and len(tree) == r["nodes"]
        last = tree[path[-1]]
        assert last.extracted == r["extracted"] and last.correct == r["correct"]
        if r["strategy"] == "beam":
            assert len(path) > 2 and any(n.score is not None for n in tree.nodes)  # a real step tree, rated


def report_payload(run):
    page = (run / "report.html").read_text()
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.DOTALL)
    return page, json.loads(m.group(1))


def test_report_holds_table_image_and_trees(run):
    page, data = report_payload(run)
    img = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert img and base64.b64decode(img.group(1)) == (run / "scaling.png").read_bytes()
    assert "<script src" not in page and "http" not in page.split("<script")[0]  # self-contained
    assert [r["label"] for r in data["runs"]] == LABELS and len(data["examples"]) == 4
    for r in records(run):
        shown = data["results"][r["label"]][r["example_id"]]
        tree = Tree.from_json((run / r["tree"]).read_text())
        assert shown["correct"] == r["correct"] and len(shown["tree"]["nodes"]) == len(tree)
        assert [n["id"] for n in shown["tree"]["nodes"] if n.get("chosen")] == tree.chosen_path()


# A DOM just big enough for the report's script: elements with children, text, classes and handlers.
DOM_SHIM = r"""
class El{constructor(t){this.tagName=t;this.children=[];this.className='';this.dataset={};this.style={};this._t='';
 this.value='';this.checked=false;const s=this;this.classList={add(c){if(!s.className.split(' ').includes(c))s.className=(s.className+' '+c).trim();},
 remove(c){s.className=s.className.split(' ').filter(x=>x!==c).join(' ');}};}
 appendChild(c){this.children.push(c);if(this.tagName==='select'&&this.children.length===1)this.value=c.value;return c;}
 insertBefore(c,r){const i=this.children.indexOf(r);this.children.splice(i<0?0:i,0,c);return c;}
 get firstChild(){return this.children[0]||null;}
 set textContent(t){this._t=String(t);this.children=[];} get textContent(){return this._t+this.children.map(c=>c.textContent).join('');}
 set innerHTML(h){this._t='';this.children=[];}
 all(){return [this,...this.children.flatMap(c=>c.all())];}}
const byId={};const get=(id,t)=>byId[id]||(byId[id]=new El(t||'div'));
['problem','run'].forEach(i=>get(i,'select'));
global.document={getElementById:id=>get(id),createElement:t=>new El(t),
 querySelectorAll:sel=>{const tds=get('grid').all().filter(e=>e.tagName==='td');return sel.endsWith('.sel')?tds.filter(e=>e.className.split(' ').includes('sel')):tds;}};
get('data','script').textContent=require('fs').readFileSync(process.argv[2],'utf8');
eval(require('fs').readFileSync(process.argv[3],'utf8'));
get('problem').value=process.argv[4]; get('run').value=process.argv[5]; get('run').onchange();
const chosen=get('tree').all().filter(e=>e.tagName==='li'&&e.className.split(' ').includes('chosen'));
console.log(JSON.stringify({chosen:chosen.length,nodes:get('tree').all().filter(e=>e.tagName==='li').length,
 summary:get('summary').textContent,tree:get('tree').textContent,
 cells:get('grid').all().filter(e=>e.tagName==='td'&&e.dataset.run).length}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_report_viewer_renders_a_tree_in_node(run, tmp_path):
    page = (run / "report.html").read_text()
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.DOTALL)
    (tmp_path / "data.json").write_text(m.group(1))
    (tmp_path / "viewer.js").write_text(page.rsplit("<script>", 1)[1].split("</script>")[0])
    (tmp_path / "shim.js").write_text(DOM_SHIM)
    rec = next(r for r in records(run) if r["label"] == "beam@128")
    tree = Tree.from_json((run / rec["tree"]).read_text())
    got = json.loads(subprocess.run(
        ["node", str(tmp_path / "shim.js"), str(tmp_path / "data.json"), str(tmp_path / "viewer.js"),
         rec["example_id"], "beam@128"], capture_output=True, text=True, check=True, timeout=30).stdout)
    assert got["nodes"] == len(tree) and got["chosen"] == len(tree.chosen_path())
    assert got["cells"] == len(LABELS) * 4
    assert f"chosen answer: {rec['extracted']}" in got["summary"]
    chosen_leaf = tree[tree.chosen_path()[-1]]
    assert chosen_leaf.text.strip().replace("\n", "⏎\n") in got["tree"]


def test_resume_skips_done_work_and_runs_only_new_cells(run, capsys):
    before = (run / "results.jsonl").read_text()
    assert main(["search", *ARGS, "--out", str(run)]) == 0  # nothing to do: no model is even loaded
    assert (run / "results.jsonl").read_text() == before
    args = [a if a != "64,128" else "64,128,96" for a in ARGS]
    assert main(["search", *args, "--strategies", "sc", "--out", str(run)]) == 0
    new = records(run)[len(LABELS) * 4:]
    assert sorted({r["label"] for r in new}) == ["sc@96"] and len(new) == 4
    rows = [r["label"] for r in json.loads((run / "table.json").read_text())["rows"]]
    assert rows == ["greedy", "sc@64", "sc@128", "sc@96"]  # the table is this command's grid
    assert "| sc | 96 |" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--strategies", "sc,nope"], "unknown search strategy 'nope'"),
    (["--scorer", "bogus"], "unknown scorer 'bogus'"),
    (["--scorer", "beam=mc-rollout,sc=agreement,frob=confidence"], "unknown strategy 'frob'"),
    (["--options", "{beam: {nope: 1}}"], "unknown setting(s) for BeamConfig: nope"),
])
def test_bad_names_exit_2_with_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["search", *ARGS, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before anything was loaded or written
