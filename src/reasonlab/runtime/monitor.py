"""The anomaly monitor of a training run: notice when RL goes wrong, say what to do about it.

Long RL runs fail in a few recognisable ways (seed report §8.7.2): the policy finds a hole in the
reward and its reward leaps (reward hacking), its entropy collapses and exploration stops, it drifts
far from the reference (KL blow-up), its completions balloon to the length limit or shrink to
nothing, or the optimisation itself breaks (NaN, exploding gradients). The trainer hands
:meth:`Monitor.update` the step's metric dict once per step; each detector below looks at one
metric against its recent history and reports what it sees:

===================  =====================================================================  ========
kind                 fires when                                                             baseline
===================  =====================================================================  ========
``nan``              a monitored metric or the loss is NaN or ±inf                          no
``reward_jump``      reward − median(window) > k · robust std (1.4826 · MAD), or > an        yes
                     absolute amount; the step's samples are dumped for inspection
``entropy_collapse`` entropy < a floor, or < (1 − drop) · its early value                   drop: yes
``kl_blowup``        kl > kl_max                                                            no
``length_explosion`` mean length > ratio_high · median(window), or truncation rate > max     ratio: yes
``length_collapse``  mean length < ratio_low · median(window)                               yes
``grad_explosion``   grad_norm > grad_norm_max, or > k · median(window)                     k: yes
===================  =====================================================================  ========

Robust statistics (median, MAD) rather than mean/std: a baseline must not be dragged by the very
outliers it is there to flag. Detectors that compare with a baseline stay quiet until they have
``monitor_warmup`` values of it; a detector that fired stays quiet for ``monitor_cooldown`` steps,
so that one event is reported once, not on every step of its aftermath.

Each kind has an action: ``warn`` (log it and go on), ``stop``, ``rollback`` (restore the last good
checkpoint and lower the learning rate: :func:`rollback`) or ``off``. Every anomaly is appended to
``<run>/anomalies.jsonl``; when the trainer passes the step's samples, they are written to
``<run>/anomalies/step_<N>_<kind>.jsonl`` so a reward jump can be read, not guessed at.

The monitor's state (the histories, the cooldowns, the rollback count) is a plain JSON-able dict:
it goes into checkpoints, and a run resumed from one fires exactly where the uninterrupted run
would have. A trainer uses it like this::

    monitor = Monitor(cfg, run_dir, resume_step=resumed_step)
    monitor.load_state_dict(extra["monitor"])                  # when resuming
    for step in ...:
        ...
        anomalies = monitor.update(step, metrics, samples)     # samples: [{"prompt", "completion", "rewards"}]
        action = monitor.decision(anomalies)                   # None, "warn", "stop" or "rollback"
        if action == "stop":
            break
        if action == "rollback":
            restored = rollback(run_dir, model, optimizer, scheduler, cfg.rollback_lr_factor,
                                before_step=step, monitor=monitor)
            if restored is None:                               # nothing saved before the anomaly
                break
            step = restored
            continue
        save_checkpoint(..., extra={"monitor": monitor.state_dict()})
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reasonlab.errors import UsageError
from reasonlab.runtime.rundir import RunDir

log = logging.getLogger(__name__)

ANOMALIES_FILE = "anomalies.jsonl"
SAMPLES_DIR = "anomalies"
ACTIONS = ("off", "warn", "stop", "rollback")
#: Strength of each action, for :meth:`Monitor.decision`: the strongest remedy asked for wins.
_RANK = {"warn": 1, "stop": 2, "rollback": 3}
#: 1.4826 · MAD estimates the standard deviation of normally distributed data.
_MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds and actions of the training anomaly monitor (a threshold of 0 disables its check)."""

    monitor_warmup: int = 10
    """Values of a metric seen before the detectors that compare it with its own history may fire."""
    monitor_window: int = 20
    """Recent steps forming the running baseline (median, MAD) of reward, length and gradient norm."""
    monitor_cooldown: int = 10
    """Steps a detector stays quiet after it fired, so one event is reported once."""
    reward_key: str = "reward_mean"
    """Metric holding the mean reward of the step's samples."""
    entropy_key: str = "entropy"
    """Metric holding the mean per-token entropy of the policy."""
    kl_key: str = "kl"
    """Metric holding the KL divergence to the reference policy."""
    length_key: str = "completion_len_mean"
    """Metric holding the mean completion length in tokens."""
    truncation_key: str = "truncation_rate"
    """Metric holding the fraction of completions cut off at the length limit."""
    grad_norm_key: str = "grad_norm"
    """Metric holding the global gradient norm (before clipping)."""
    loss_key: str = "loss"
    """Metric holding the training loss (checked for NaN/inf only)."""
    reward_jump_k: float = 6.0
    """Reward jump: fire when the reward exceeds the window median by this many robust standard deviations."""
    reward_jump_min_std: float = 0.05
    """Reward jump: the smallest standard deviation assumed, so a flat reward history does not make every change a jump."""
    reward_jump_abs: float = 0.0
    """Reward jump: also fire when the reward exceeds the window median by this absolute amount (0: off)."""
    reward_jump_action: str = "warn"
    """Action on a reward jump (possible reward hacking): off, warn, stop or rollback."""
    entropy_floor: float = 0.0
    """Entropy collapse: fire when entropy falls below this (0: off)."""
    entropy_drop: float = 0.9
    """Entropy collapse: fire when entropy has fallen by this fraction of its early value (median of the first monitor_warmup steps; 0: off)."""
    entropy_action: str = "warn"
    """Action on an entropy collapse: off, warn, stop or rollback."""
    kl_max: float = 1.0
    """KL blow-up: fire when the KL to the reference exceeds this (0: off)."""
    kl_action: str = "warn"
    """Action on a KL blow-up: off, warn, stop or rollback."""
    length_ratio_high: float = 2.0
    """Length explosion: fire when mean completion length exceeds this times its window median (0: off)."""
    length_ratio_low: float = 0.5
    """Length collapse: fire when mean completion length falls below this times its window median (0: off)."""
    truncation_max: float = 0.5
    """Length explosion: also fire when the truncation rate exceeds this (0: off)."""
    length_action: str = "warn"
    """Action on a length explosion or collapse: off, warn, stop or rollback."""
    grad_norm_max: float = 0.0
    """Exploding gradients: fire when the gradient norm exceeds this (0: off)."""
    grad_norm_k: float = 10.0
    """Exploding gradients: fire when the gradient norm exceeds this times its window median (0: off)."""
    grad_action: str = "warn"
    """Action on exploding gradients: off, warn, stop or rollback."""
    nan_action: str = "stop"
    """Action on a NaN or infinite monitored metric or loss: off, warn, stop or rollback."""
    rollback_lr_factor: float = 0.5
    """On rollback, multiply the learning rate by this."""
    max_rollbacks: int = 3
    """Rollbacks allowed in one run; an anomaly asking for one more stops the run instead."""

    def __post_init__(self) -> None:
        for name in ("reward_jump_action", "entropy_action", "kl_action", "length_action", "grad_action", "nan_action"):
            if getattr(self, name) not in ACTIONS:
                raise ValueError(f"{name} must be one of {', '.join(ACTIONS)}, got {getattr(self, name)!r}")
        if self.monitor_warmup < 1 or self.monitor_window < self.monitor_warmup:
            raise ValueError(f"need 1 <= monitor_warmup <= monitor_window, got {self.monitor_warmup} and {self.monitor_window}")
        for name in ("monitor_cooldown", "reward_jump_k", "reward_jump_min_std", "reward_jump_abs", "entropy_floor",
                     "kl_max", "length_ratio_high", "length_ratio_low", "truncation_max", "grad_norm_max",
                     "grad_norm_k", "max_rollbacks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.entropy_drop < 1:
            raise ValueError(f"entropy_drop must be in [0, 1), got {self.entropy_drop}")
        if not 0 < self.rollback_lr_factor <= 1:
            raise ValueError(f"rollback_lr_factor must be in (0, 1], got {self.rollback_lr_factor}")


@dataclass(frozen=True)
class Anomaly:
    """One detector firing at one step."""

    kind: str
    step: int
    message: str
    action: str
    value: float
    samples_file: str | None = None
    """The dumped samples, relative to the run directory (when samples were given and a run dir is set)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- detectors: pure functions of (config, the step's value, the metric's history) ----------------------
#
# ``history`` holds the metric's previous finite values, oldest first: the last ``monitor_window``
# of them for a running baseline, or the first ``monitor_warmup`` for an "early value" baseline
# (see ``_WATCHED``). Each returns ``(kind, message)`` or None.

Finding = tuple[str, str]


def robust_std(values: Sequence[float]) -> float:
    """1.4826 · median absolute deviation: a standard deviation that outliers barely move."""
    med = statistics.median(values)
    return _MAD_TO_STD * statistics.median(abs(v - med) for v in values)


def detect_reward_jump(cfg: MonitorConfig, value: float, history: Sequence[float]) -> Finding | None:
    """Upward jumps only: a reward that falls is a learning problem, one that leaps may be a hack."""
    if len(history) < cfg.monitor_warmup:
        return None
    base = statistics.median(history)
    std = max(robust_std(history), cfg.reward_jump_min_std)
    rise = value - base
    if cfg.reward_jump_k > 0 and rise > cfg.reward_jump_k * std:
        return "reward_jump", (f"{cfg.reward_key} jumped to {value:.4g} from a median of {base:.4g} "
                               f"({rise / std:.1f} robust std, threshold {cfg.reward_jump_k:g}): possible reward hacking")
    if cfg.reward_jump_abs > 0 and rise > cfg.reward_jump_abs:
        return "reward_jump", (f"{cfg.reward_key} jumped to {value:.4g} from a median of {base:.4g} "
                               f"(+{rise:.4g} > {cfg.reward_jump_abs:g}): possible reward hacking")
    return None


def detect_entropy_collapse(cfg: MonitorConfig, value: float, early: Sequence[float]) -> Finding | None:
    if cfg.entropy_floor > 0 and value < cfg.entropy_floor:
        return "entropy_collapse", f"{cfg.entropy_key} fell to {value:.4g}, below the floor {cfg.entropy_floor:g}"
    if cfg.entropy_drop > 0 and len(early) >= cfg.monitor_warmup:
        start = statistics.median(early)
        if start > 0 and value < (1 - cfg.entropy_drop) * start:
            return "entropy_collapse", (f"{cfg.entropy_key} fell to {value:.4g}, {1 - value / start:.0%} below its "
                                        f"early value {start:.4g} (threshold {cfg.entropy_drop:.0%})")
    return None


def detect_kl_blowup(cfg: MonitorConfig, value: float, history: Sequence[float]) -> Finding | None:
    if cfg.kl_max > 0 and value > cfg.kl_max:
        return "kl_blowup", f"{cfg.kl_key} is {value:.4g}, above {cfg.kl_max:g}: the policy ran far from the reference"
    return None


def detect_length_change(cfg: MonitorConfig, value: float, history: Sequence[float]) -> Finding | None:
    if len(history) < cfg.monitor_warmup:
        return None
    base = statistics.median(history)
    if base <= 0:
        return None
    ratio = value / base
    if cfg.length_ratio_high > 0 and ratio > cfg.length_ratio_high:
        return "length_explosion", (f"{cfg.length_key} rose to {value:.4g}, {ratio:.2f}x its running median "
                                    f"{base:.4g} (threshold {cfg.length_ratio_high:g}x)")
    if cfg.length_ratio_low > 0 and ratio < cfg.length_ratio_low:
        return "length_collapse", (f"{cfg.length_key} fell to {value:.4g}, {ratio:.2f}x its running median "
                                   f"{base:.4g} (threshold {cfg.length_ratio_low:g}x)")
    return None


def detect_truncation(cfg: MonitorConfig, value: float, history: Sequence[float]) -> Finding | None:
    # Completions running into the length limit en masse is how a length explosion looks once
    # the mean length can grow no further, so it reports as one.
    if cfg.truncation_max > 0 and value > cfg.truncation_max:
        return "length_explosion", f"{cfg.truncation_key} is {value:.2%}, above {cfg.truncation_max:.2%}"
    return None


def detect_grad_explosion(cfg: MonitorConfig, value: float, history: Sequence[float]) -> Finding | None:
    if cfg.grad_norm_max > 0 and value > cfg.grad_norm_max:
        return "grad_explosion", f"{cfg.grad_norm_key} is {value:.4g}, above {cfg.grad_norm_max:g}"
    if cfg.grad_norm_k > 0 and len(history) >= cfg.monitor_warmup:
        base = statistics.median(history)
        if base > 0 and value > cfg.grad_norm_k * base:
            return "grad_explosion", (f"{cfg.grad_norm_key} is {value:.4g}, {value / base:.1f}x its running median "
                                      f"{base:.4g} (threshold {cfg.grad_norm_k:g}x)")
    return None


Detector = Callable[[MonitorConfig, float, Sequence[float]], "Finding | None"]

#: metric name -> (config field holding its key, which values its history keeps, detector).
#: "last": the most recent ``monitor_window`` values (a running baseline); "first": the first
#: ``monitor_warmup`` values (an early baseline, which a slow decline must not drag along).
_WATCHED: dict[str, tuple[str, str, Detector]] = {
    "reward": ("reward_key", "last", detect_reward_jump),
    "entropy": ("entropy_key", "first", detect_entropy_collapse),
    "kl": ("kl_key", "last", detect_kl_blowup),
    "length": ("length_key", "last", detect_length_change),
    "truncation": ("truncation_key", "last", detect_truncation),
    "grad_norm": ("grad_norm_key", "last", detect_grad_explosion),
}

#: anomaly kind -> config field naming its action.
ACTION_FIELD = {
    "nan": "nan_action",
    "reward_jump": "reward_jump_action",
    "entropy_collapse": "entropy_action",
    "kl_blowup": "kl_action",
    "length_explosion": "length_action",
    "length_collapse": "length_action",
    "grad_explosion": "grad_action",
}


def _scalar(key: str, v: Any) -> float:
    """A metric value (Python, numpy or 0-d torch number) as a float; anything else is a usage error."""
    item = getattr(v, "item", None)
    if callable(item):
        v = item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UsageError(f"monitored metric {key!r} must be a number, got {type(v).__name__} {v!r}")
    return float(v)


# -- the monitor -------------------------------------------------------------------------------------------


class Monitor:
    """Runs every detector on each step's metrics; keeps the histories, cooldowns and rollback count.

    ``run_dir`` (optional) is where anomalies and dumped samples are written. ``resume_step``: the
    step of the checkpoint a run resumed from; records of later steps are dropped from
    ``anomalies.jsonl`` because the resumed run is about to live through those steps again.
    """

    def __init__(self, config: MonitorConfig | None = None, run_dir: RunDir | str | Path | None = None,
                 resume_step: int | None = None):
        self.config = config or MonitorConfig()
        self.run = None if run_dir is None else (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir))
        if self.run is not None and resume_step is not None:
            kept = [r for r in self.run.read_jsonl(ANOMALIES_FILE) if int(r.get("step", 0)) <= resume_step]
            self.run.rewrite_jsonl(ANOMALIES_FILE, kept)
        # (step, value) pairs per watched metric, so that a rollback can forget what came after it.
        self._history: dict[str, list[list[float]]] = {name: [] for name in _WATCHED}
        self._last_fired: dict[str, int] = {}
        self.rollbacks = 0
        # Process-local, not state: used only to warn once about metrics that never show up.
        self._updates = 0
        self._seen: set[str] = set()

    # -- per step ------------------------------------------------------------------------------------

    def update(self, step: int, metrics: Mapping[str, Any], samples: list[dict[str, Any]] | None = None) -> list[Anomaly]:
        """Check one step's metrics; record, log and return the anomalies that fired.

        A metric missing from ``metrics`` is skipped (e.g. no ``kl`` when β = 0). ``samples``: the
        step's completions as dicts (prompt, completion, rewards, ...), dumped when an anomaly fires.
        """
        cfg = self.config
        step = int(step)
        findings: list[tuple[Finding, float]] = []
        values: dict[str, float] = {}
        for name, (key_field, _, _) in _WATCHED.items():
            key = getattr(cfg, key_field)
            if key in metrics and metrics[key] is not None:
                values[name] = _scalar(key, metrics[key])
                self._seen.add(name)

        bad = {getattr(cfg, _WATCHED[n][0]): v for n, v in values.items() if not math.isfinite(v)}
        if cfg.loss_key in metrics and metrics[cfg.loss_key] is not None:
            loss = _scalar(cfg.loss_key, metrics[cfg.loss_key])
            if not math.isfinite(loss):
                bad[cfg.loss_key] = loss
        if bad:
            what = ", ".join(f"{k}={v}" for k, v in bad.items())
            findings.append((("nan", f"non-finite metrics: {what}"), next(iter(bad.values()))))

        for name, value in values.items():
            if not math.isfinite(value):
                continue  # reported above; a NaN must not reach a baseline either
            found = _WATCHED[name][2](cfg, value, [v for _, v in self._history[name]])
            if found is not None:
                findings.append((found, value))

        fired = [self._fire(step, kind, message, value, samples) for (kind, message), value in findings
                 if self._may_fire(step, kind)]
        fired = [a for a in fired if a is not None]

        # Histories take the step's values after the checks: each step is compared with the past only.
        for name, value in values.items():
            if math.isfinite(value):
                self._remember(name, step, value)
        self._updates += 1
        if self._updates == cfg.monitor_warmup:
            self._warn_unseen()
        return fired

    def _may_fire(self, step: int, kind: str) -> bool:
        if getattr(self.config, ACTION_FIELD[kind]) == "off":
            return False
        last = self._last_fired.get(kind)
        if last is not None and step - last < self.config.monitor_cooldown:
            log.debug("monitor: %s at step %d suppressed (cooldown after step %d)", kind, step, last)
            return False
        return True

    def _fire(self, step: int, kind: str, message: str, value: float,
              samples: list[dict[str, Any]] | None) -> Anomaly:
        cfg = self.config
        self._last_fired[kind] = step
        action = getattr(cfg, ACTION_FIELD[kind])
        if action == "rollback" and self.rollbacks >= cfg.max_rollbacks:
            action = "stop"
            message += f" (already rolled back {self.rollbacks} times, the limit: stopping instead)"
        samples_file = None
        if samples and self.run is not None:
            samples_file = f"{SAMPLES_DIR}/step_{step}_{kind}.jsonl"
            self.run.rewrite_jsonl(samples_file, [dict(s) for s in samples])
        anomaly = Anomaly(kind=kind, step=step, message=message, action=action, value=value,
                          samples_file=samples_file)
        log.warning("step %d: %s anomaly: %s -> %s%s", step, kind, message, action,
                    f" (samples in {self.run / samples_file})" if samples_file else "")
        if self.run is not None:
            self.run.append_jsonl(ANOMALIES_FILE, {"event": "anomaly", **anomaly.to_dict()})
        return anomaly

    def _remember(self, name: str, step: int, value: float) -> None:
        hist = self._history[name]
        if _WATCHED[name][1] == "first":
            if len(hist) < self.config.monitor_warmup:
                hist.append([step, value])
        else:
            hist.append([step, value])
            del hist[:-self.config.monitor_window]

    def _warn_unseen(self) -> None:
        for name, (key_field, _, _) in _WATCHED.items():
            if name not in self._seen:
                log.warning("monitor: metric %r was not logged in the first %d steps; its detector is idle",
                            getattr(self.config, key_field), self.config.monitor_warmup)

    @staticmethod
    def decision(anomalies: Iterable[Anomaly]) -> str | None:
        """The strongest action the anomalies ask for (rollback > stop > warn), or None if there are none."""
        actions = [a.action for a in anomalies if a.action in _RANK]
        return max(actions, key=_RANK.__getitem__) if actions else None

    # -- rollback and state --------------------------------------------------------------------------

    def rewind(self, step: int) -> None:
        """Forget what was observed after ``step`` (the step a rollback restored) and count the rollback.

        Cooldowns started after it are lifted too, so that the same trouble coming back after the
        rollback is reported again rather than ignored.
        """
        for name, hist in self._history.items():
            self._history[name] = [p for p in hist if p[0] <= step]
        self._last_fired = {k: s for k, s in self._last_fired.items() if s <= step}
        self.rollbacks += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as plain JSON-able data (for checkpoint ``extra``)."""
        return {
            "history": {name: [list(p) for p in hist] for name, hist in self._history.items()},
            "last_fired": dict(self._last_fired),
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            history = {name: [[int(s), float(v)] for s, v in state["history"].get(name, [])] for name in _WATCHED}
            last_fired = {str(k): int(s) for k, s in state["last_fired"].items()}
            rollbacks = int(state["rollbacks"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"not a monitor state (from Monitor.state_dict): {e!r}") from e
        self._history, self._last_fired, self.rollbacks = history, last_fired, rollbacks


# -- rollback ------------------------------------------------------------------------------------------------


def last_good_checkpoint(run_dir: str | Path, before_step: int | None = None) -> Path | None:
    """The complete checkpoint with the highest step below ``before_step`` (any step if None), or None."""
    from reasonlab.runtime.checkpoint import _step_dirs

    found = [(s, p) for s, p in _step_dirs(Path(run_dir)) if before_step is None or s < before_step]
    return found[-1][1] if found else None


def rollback(run_dir: RunDir | str | Path, model: Any, optimizer: Any = None, scheduler: Any = None,
             lr_factor: float = 0.5, *, before_step: int | None = None, monitor: Monitor | None = None,
             modules: dict[str, Any] | None = None, record: bool = True) -> int | None:
    """Restore the last good checkpoint and lower the learning rate; return the restored step.

    The last good checkpoint is the newest complete one saved before ``before_step`` (the step of
    the anomaly; None: the newest of all). Checkpoints at or after ``before_step`` hold weights
    the anomaly already touched, so they are deleted: a crash later must not resume from them.
    Weights, optimizer, scheduler and RNG states are restored with
    :func:`~reasonlab.runtime.checkpoint.load_checkpoint`; then every optimizer param group's
    ``lr`` (and ``initial_lr``), and the scheduler's ``base_lrs``, are multiplied by ``lr_factor``
    — a scheduler recomputes lr from ``base_lrs`` on every step, so lowering only the param groups
    would be undone at the next step. The lowered values are part of the optimizer and scheduler
    state, so later checkpoints keep them. ``monitor`` (optional) is rewound to the restored step.
    The rollback is recorded in ``<run>/anomalies.jsonl``. ``modules`` are further trained modules
    saved with the checkpoint (``save_checkpoint(modules=...)``, e.g. a PPO value head).
    ``record=False`` skips the record (the other processes of a data-parallel run follow the main one).

    Returns None, changing nothing, when no checkpoint was saved before ``before_step``: there is
    nothing good to go back to, and the caller should stop the run instead.
    """
    from reasonlab.runtime.checkpoint import _step_dirs, load_checkpoint

    if not 0 < lr_factor <= 1:
        raise UsageError(f"rollback lr_factor must be in (0, 1], got {lr_factor}")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    good = last_good_checkpoint(run.path, before_step)
    if good is None:
        where = f" before step {before_step}" if before_step is not None else ""
        log.warning("cannot roll back: no complete checkpoint in %s%s", run / "checkpoints", where)
        return None
    if before_step is not None:
        for s, p in _step_dirs(run.path, complete_only=False):
            if s >= before_step:
                log.warning("rollback: deleting checkpoint %s, saved at or after the anomaly at step %d", p, before_step)
                shutil.rmtree(p, ignore_errors=True)

    step, _, _ = load_checkpoint(good, model=model, optimizer=optimizer, scheduler=scheduler, modules=modules)
    if optimizer is not None:
        for group in optimizer.param_groups:
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] = _scaled(group[key], lr_factor)
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * lr_factor for lr in scheduler.base_lrs]
        if optimizer is not None and hasattr(scheduler, "_last_lr"):  # what get_last_lr() reports
            scheduler._last_lr = [float(g["lr"]) for g in optimizer.param_groups]
    if monitor is not None:
        monitor.rewind(step)
    lrs = [float(g["lr"]) for g in optimizer.param_groups] if optimizer is not None else []
    log.warning("rolled back to step %d (%s); learning rate x%g -> %s", step, good, lr_factor,
                ", ".join(f"{lr:.3g}" for lr in lrs) or "n/a")
    if record:
        run.append_jsonl(ANOMALIES_FILE, {"event": "rollback", "step": before_step if before_step is not None else step,
                                          "restored_step": step, "checkpoint": str(good), "lr_factor": lr_factor,
                                          "lr": lrs})
    return step


def _scaled(lr: Any, factor: float) -> Any:
    # A tensor lr (capturable / compiled optimizers) is scaled in place: the optimizer holds on to it.
    if hasattr(lr, "mul_"):
        return lr.mul_(factor)
    return lr * factor
