"""reasonlab: search, rewards and learning for reasoning language models.

The layers (see DESIGN.md): types/config -> runtime -> policies -> tasks -> rewards -> search -> learn -> cli.
Import submodules explicitly (``from reasonlab.policies import load_policy``); this top level stays
light so that ``import reasonlab`` never pulls in torch.
"""

__version__ = "0.1.0"
