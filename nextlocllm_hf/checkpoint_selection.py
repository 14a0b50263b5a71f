"""Choosing the best checkpoint on validation and deciding when to stop early.

The authors' code kept the checkpoint whose validation Hit@10 was *lower* than the best so far (inverted); here the
direction is explicit per metric and tested. The tracker is checkpointable (`state_dict` / `load_state_dict`), so a
resumed run keeps its best score, best step, patience counter and the histories its results report. Writing and
reading the checkpoints themselves (resumable state, the best model) is `checkpoints.py`'s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# Metrics where a larger value is better; every other metric (errors, losses) is minimized.
HIGHER_IS_BETTER_PREFIXES = ("hit@", "mrr", "ndcg@")


def higher_is_better(metric: str) -> bool:
    return metric.startswith(HIGHER_IS_BETTER_PREFIXES)


@dataclass
class BestCheckpointTracker:
    """Tracks the best validation value of one metric; `patience` evaluations without improvement stop training."""

    metric: str = "hit@1"
    patience: int = 0  # 0: never stop early
    min_delta: float = 0.0
    best_value: float | None = None
    best_step: int = -1
    evaluations_without_improvement: int = 0
    completed_steps: int = 0  # optimizer steps done; kept here so one object restores the run's progress
    validation_history: list = field(default_factory=list)  # one dict per evaluation
    training_history: list = field(default_factory=list)  # one dict per optimizer step

    def update(self, value: float, step: int) -> bool:
        """Record a validation value; True when it beats the best so far (the caller then saves the model)."""
        if value is None or math.isnan(value):
            raise ValueError(f"validation {self.metric}={value!r} at step {step}: cannot select a checkpoint on it")
        improved = self.best_value is None or (
            value > self.best_value + self.min_delta
            if higher_is_better(self.metric)
            else value < self.best_value - self.min_delta
        )
        if improved:
            self.best_value, self.best_step = value, step
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
