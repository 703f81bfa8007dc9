"""A reward that crashes the run at its first step (a stand-in for any runtime failure a restart cannot fix)."""


def reward(completions, **kwargs):
    raise RuntimeError("injected crash in the reward function")
