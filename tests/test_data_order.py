"""Data order across epochs: epoch e's order is a function of (seed, e), so a run resumed in any epoch sees that
epoch's samples in the order the uninterrupted run saw them. The check is run against a sampler that ignores the
epoch too: it must fail there, or it would not be a test."""

from __future__ import annotations

from trl.trainer.utils import RepeatSampler

from vqrl.trainers.base import EpochRepeatSampler


class IgnoresTheEpoch(RepeatSampler):
    """TRL's sampler with a set_epoch that does nothing: each epoch's order depends on how many epochs this process
    has iterated, so a resumed process replays epoch 0's order in epoch 1."""

    def set_epoch(self, epoch: int) -> None:
        pass


def _sampler(cls, seed):
    # 12 prompts, 2 completions each, 2 prompts per generation batch: GRPO's sampler as TRL builds it
    return cls(data_source=list(range(12)), mini_repeat_count=2, batch_size=2, repeat_count=1, shuffle=True, seed=seed)


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(iter(sampler))


def order_problems(cls) -> list[str]:
    """What is wrong with `cls`'s epoch orders (empty: each epoch's order depends on seed and epoch alone)."""
    problems = []
    for seed in (0, 42):
        uninterrupted = _sampler(cls, seed)
        orders = [_epoch(uninterrupted, e) for e in range(3)]
        if len({tuple(o) for o in orders}) < 3:
            problems.append(f"seed {seed}: epochs repeat one order")
        for e in (1, 2):
            resumed = _epoch(_sampler(cls, seed), e)  # a new process that starts in epoch e
            if resumed != orders[e]:
                problems.append(f"seed {seed}: a run resumed in epoch {e} sees another order")
        again = _sampler(cls, seed)
        if [_epoch(again, e) for e in range(3)] != orders:
            problems.append(f"seed {seed}: not reproducible")
    if _epoch(_sampler(cls, 0), 1) == _epoch(_sampler(cls, 42), 1):
        problems.append("the seed does not change the order")
    return problems


def test_each_epochs_order_is_a_function_of_seed_and_epoch():
    assert order_problems(EpochRepeatSampler) == []


def test_the_check_catches_a_sampler_that_ignores_the_epoch():
    assert "seed 0: a run resumed in epoch 1 sees another order" in order_problems(IgnoresTheEpoch)


def test_every_prompt_once_per_epoch_with_its_completions_together():
    sampler = _sampler(EpochRepeatSampler, 0)
    for e in range(2):
        order = _epoch(sampler, e)
        assert order[::2] == order[1::2]  # each prompt's 2 completions side by side
        assert sorted(order[::2]) == list(range(12))
