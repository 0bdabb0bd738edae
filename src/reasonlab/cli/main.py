"""The ``reasonlab`` command.

    reasonlab eval  [--model M] [--task T] [--n N] [--limit L] [--out DIR] ...   evaluate (the main job)
    reasonlab search --strategies sc,beam --budgets 256,512 --model M --task T    test-time search x budgets
    reasonlab serve --model M [--strategy S --budget B] [--port P]               OpenAI-compatible server
    reasonlab train sft --model tiny --data rows.jsonl ...                        supervised fine-tuning
    reasonlab train grpo|rloo|reinforce|ppo --config recipes/<name>.yaml ...       online RL
    reasonlab models                                                              built-in models
    reasonlab tasks                                                               task specs

Every sub-command takes ``--help`` and ``--config file.yaml``. Errors the user can fix (unknown
model, task or path, malformed data, an unreachable server) print one line and exit with code 2;
a backend failing at run time exits 1; Ctrl-C exits 130 after saving what was done.
"""

from __future__ import annotations

import logging
import os
import sys

from reasonlab.errors import BackendError, ReasonlabError, UsageError, print_error

USAGE = """usage: reasonlab <command> [options]

commands:
  eval            evaluate a model on a task (greedy or n samples): accuracy, pass@k, maj@k
  search          run search strategies x token budgets: accuracy vs tokens table, plot, HTML report, trees
  serve           OpenAI-compatible /v1/chat/completions server answering with a search strategy
  train sft       supervised fine-tuning (loss on completion tokens, LoRA optional)
  train grpo      online RL with group-relative advantages (DAPO / Dr.GRPO / GSPO variants)
  train rloo      online RL with the leave-one-out baseline
  train reinforce online RL: REINFORCE++ (batch-normalised advantages)
  train ppo       online RL with a value head and GAE
  train orm       outcome reward model (or --objective implicit: PRIME's implicit PRM) on verifier-labelled samples
  train prm       process reward model on step-labelled JSONL
  label           Math-Shepherd step labels: sample solutions, roll out from each step prefix, write JSONL
  models          list the built-in models
  tasks           list the task specs

run `reasonlab <command> --help` for the options of a command."""


def _train(argv: list[str]) -> int:
    algos = {"sft": "reasonlab.learn.sft", "grpo": "reasonlab.learn.grpo", "rloo": "reasonlab.learn.rloo",
             "reinforce": "reasonlab.learn.reinforce", "ppo": "reasonlab.learn.ppo",
             "orm": "reasonlab.learn.orm", "prm": "reasonlab.learn.prm"}
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: reasonlab train {{{','.join(algos)}}} [options]")
        return 0 if argv else 2
    algo, rest = argv[0], argv[1:]
    if algo not in algos:
        raise UsageError(f"unknown training algorithm {algo!r}; available: {', '.join(algos)}")
    import importlib

    return importlib.import_module(algos[algo]).main(rest)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "eval":
        from reasonlab.evaluation.harness import main as eval_main

        return eval_main(rest)
    if cmd == "search":
        from reasonlab.search.runner import main as search_main

        return search_main(rest)
    if cmd == "serve":
        from reasonlab.serve import main as serve_main

        return serve_main(rest)
    if cmd == "train":
        return _train(rest)
    if cmd == "label":
        from reasonlab.rewards.labels import main as label_main

        return label_main(rest)
    if cmd == "models":
        from reasonlab.policies.models import BUILTIN_MODELS

        for name, what in BUILTIN_MODELS.items():
            print(f"{name:10s} {what}")
        return 0
    if cmd == "tasks":
        from reasonlab.tasks import list_tasks

        print("\n".join(list_tasks()))
        return 0
    if cmd in ("--version", "version"):
        from reasonlab import __version__

        print(__version__)
        return 0
    raise UsageError(f"unknown command {cmd!r}; run `reasonlab --help`")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Offline by design: never reach for the Hugging Face hub behind the user's back.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(argv)
    except UsageError as e:
        print_error(e)
        return 2
    except BackendError as e:
        print_error(e, "backend error")
        return 1
    except ReasonlabError as e:
        print_error(e)
        return 1
    except KeyboardInterrupt as e:
        print(f"reasonlab: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
