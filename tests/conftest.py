"""Shared test setup: offline, and one torch thread.

Tests run tiny models, for which a second thread buys little, and on a shared 2-core machine (CI
runs several worker processes: verifier pools, sandboxes, servers) extra OpenMP threads mostly spin.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("REASONLAB_LLAMA_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def random_tiny_dir(tmp_path_factory):
    """A small randomly initialised tiny-architecture checkpoint (fast, independent of the shipped one)."""
    from reasonlab.policies.tiny import new_tiny_model

    model, tok = new_tiny_model(hidden_size=64, layers=2, heads=4, intermediate=128, seed=0)
    d = tmp_path_factory.mktemp("random_tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture
def grads_at_step():
    """``watch(trainer) -> dict``: the dict fills with each parameter's gradient as the trainer's optimizer
    steps. Tests compare updates by their gradients: AdamW's first step is about ``lr * sign(grad)``,
    so weights after it amplify float noise in near-zero gradients and are blind to the gradient's scale."""

    def watch(trainer) -> dict:
        grads: dict = {}
        step = trainer.optimizer.step

        def capture(*a, **kw):
            grads.update({k: p.grad.detach().clone() for k, p in trainer.model.named_parameters()
                          if p.grad is not None})
            return step(*a, **kw)

        trainer.optimizer.step = capture
        return grads

    return watch
