import re
from pathlib import Path

import pytest


@pytest.mark.slow
def test_readme_python_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    post = scope["post"]
    assert tuple(post.samples.shape) == (4, 2, 1, 64, 64) and post.nfe == 250
