"""The steps of a run: Burda et al.'s learning-rate stages, cut to the run's budget."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from config import NUM_STAGES, PAPER_EPOCHS, Config


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Stage i = 0..7 runs 3^i epochs at learning rate `learning_rate` * 10^(-i/7)
    (Burda et al. 2016), for `epochs` (default all 3280) or at most `max_steps` steps.
    """

    steps_per_epoch: int
    num_steps: int
    stage_ends: tuple[int, ...]  # the step at which each stage ends
    base_learning_rate: float
    eval_every_steps: int  # 0: at the ends of the stages (and of the run) only

    @classmethod
    def from_config(cls, config: Config, num_images: int) -> Schedule:
        steps_per_epoch = num_images // config.batch_size
        if steps_per_epoch < 1:  # refused by checks.size_problems first
            raise ValueError(
                f"--batch_size={config.batch_size} exceeds the {num_images} training images."
            )
        epochs = PAPER_EPOCHS if config.epochs is None else config.epochs
        num_steps = epochs * steps_per_epoch
        if config.max_steps is not None:
            num_steps = min(num_steps, config.max_steps)
        ends = np.cumsum([3**i for i in range(NUM_STAGES)]) * steps_per_epoch
        return cls(
            steps_per_epoch=steps_per_epoch,
            num_steps=num_steps,
            stage_ends=tuple(int(e) for e in ends),
            base_learning_rate=config.learning_rate,
            eval_every_steps=config.eval_every_epochs * steps_per_epoch,
        )

    def learning_rate(self) -> keras.optimizers.schedules.LearningRateSchedule:
        values = [self.base_learning_rate * 10.0 ** (-i / 7) for i in range(NUM_STAGES)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(list(self.stage_ends[:-1]), values)

    def evaluation_steps(self) -> list[int]:
        """The ends of the stages and of the run, and every `eval_every_steps`."""
        steps = {e for e in self.stage_ends if e < self.num_steps} | {self.num_steps}
        if self.eval_every_steps:
            steps |= set(range(self.eval_every_steps, self.num_steps, self.eval_every_steps))
        return sorted(steps)
