"""README's Python API block is a program: it must run as printed and meta-learn."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_api_block_runs_and_meta_learns():
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(api_block(), "README.md (Python API)", "exec"), namespace)  # noqa: S102 - our own README
    maml, sine_tasks = namespace["maml"], namespace["sine_tasks"]
    assert namespace["prediction"].shape == namespace["new"].query_y[0].shape
    with torch.no_grad():
        curve = maml.adaptation_curve(sine_tasks(200), 10).mean(0)
    # seeds 0-2 gave about 3.1 -> 0.69-0.75 after one step -> 0.27-0.34 after ten; the untrained net
    # (the loop run 0 times) 4.20 -> 4.04 -> 4.17
    assert curve[1] < 0.5 * curve[0], curve
    assert curve[10] < 0.6 * curve[1], curve
