"""``fastmaml adapt --goal`` parsing for every meta-RL environment (the end-to-end run is in
tests/integration/test_rl_cli.py)."""

import re

import pytest
import torch

from fastmaml.errors import ConfigError
from fastmaml.rl.adapt import parse_goal


@pytest.mark.parametrize(
    "env, text, goal, note",
    [
        ("nav2d", "0.3,-0.2", [[0.3, -0.2]], False),
        ("nav2d", " 0.5 , 0.5 ", [[0.5, 0.5]], False),
        ("nav2d", "0.7,0", [[0.7, 0.0]], True),
        ("cheetah-vel", "1.5", [1.5], False),
        ("cheetah-vel", "2.5", [2.5], True),
        ("ant-vel", "2.5", [2.5], False),
        ("ant-vel", "-0.5", [-0.5], True),
        ("cheetah-dir", "-1", [-1.0], False),
        ("cheetah-dir", "Forward", [1.0], False),
        ("ant-dir", "backward", [-1.0], False),
    ],
)
def test_goals_parse_to_a_batch_of_one_with_a_note_outside_the_training_goals(env, text, goal, note):
    parsed, message = parse_goal(env, text)
    assert parsed.dtype == torch.float64 and parsed.tolist() == goal
    assert (message is not None) == note
    if note:
        assert "outside the meta-training goals" in message


@pytest.mark.parametrize(
    "env, text, message",
    [
        ("nav2d", "0.3", "give two numbers as x,y"),
        ("nav2d", "0.3,0.1,0", "give two numbers as x,y"),
        ("cheetah-vel", "fast", "a cheetah-vel task's goal is a velocity in [0, 2]; give one number"),
        ("cheetah-vel", "inf", "give one number"),
        ("cheetah-dir", "0.5", "+1 (forward) or -1 (backward)"),
        ("ant-dir", "left", "+1 (forward) or -1 (backward)"),
        ("nav2d", "forward", "give two numbers as x,y"),
    ],
)
def test_bad_goals_say_what_the_environment_takes(env, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_goal(env, text)
