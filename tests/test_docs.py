"""Every bash and Python snippet of docs/reconstruct.md, every ```bash block of docs/cli.md, and every
```python / ```bash block of the other pages of docs/ runs as written (in a fresh folder, offline); every
public function has a docstring and is named in the docs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "reconstruct.md"
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", DOC.read_text(), re.S)


def test_the_guide_has_snippets():
    assert sum(kind == "bash" for kind, _ in BLOCKS) >= 4 and any(kind == "python" for kind, _ in BLOCKS)


def test_reconstruct_guide_runs(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    for i, (kind, code) in enumerate(BLOCKS):
        command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"docs/reconstruct.md snippet {i} failed:\n{code}\n{run.stderr[-3000:]}"
        if "np.array_equal" in code:
            assert run.stdout.strip().endswith("True"), run.stdout
    assert (tmp_path / "ct-slice" / "mean.nii.gz").exists() and (tmp_path / "brain" / "record.json").exists()


CLI_DOC = DOC.with_name("cli.md")
CLI_BLOCKS = re.findall(r"```bash\n(.*?)```", CLI_DOC.read_text(), re.S)  # ```text blocks are long runs, not run


def test_cli_reference_covers_every_command():
    text = CLI_DOC.read_text()
    for command in ("demo", "reconstruct", "train", "evaluate", "info", "list", "bench fastmri", "bench report",
                    "fastmri synth"):
        assert f"`invsolve {command}" in text, command
    assert "--debug" in text and "| 2 |" in text and "| 130 |" in text
    assert len(CLI_BLOCKS) >= 8


def test_cli_reference_examples_run(tmp_path):
    """Every ```bash block of docs/cli.md, in order, in one fresh folder."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"), INVSOLVE_CACHE=str(tmp_path / "cache"))
    for i, code in enumerate(CLI_BLOCKS):
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, f"docs/cli.md snippet {i} failed:\n{code}\n{run.stderr[-3000:]}"


# The other pages: every ```python and ```bash block runs, each in its own fresh folder (offline, one thread).
# Convention: only ```python and ```bash fences are code that runs. A snippet that is not meant to run on its
# own (an API sketch with `...` or undefined names, a placeholder path such as /data/fastmri or a checkpoint
# you download, a Hub download, a GPU or hours-long job, a command that installs into the environment) is
# fenced ```text instead, never skipped silently; ```toml and bare ``` fences (formulas, file trees) are shown,
# not run.
DOCS = DOC.parent
OTHER_PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name not in {"reconstruct.md", "cli.md"})
SNIPPETS = [(page, i, kind, code, page.read_text()[:m.start()].count("\n") + 1)
            for page in OTHER_PAGES
            for i, m in enumerate(re.finditer(r"^```(bash|python)\n(.*?)^```", page.read_text(), re.S | re.M))
            for kind, code in [m.groups()]]
PLUGIN = DOCS / "tutorial" / "invsolve-radiograph"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The tutorial plug-in of docs/operators.md installed into a temporary folder (no network), as its
    `pip install -e` step does, without touching the environment."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(PLUGIN)], check=True, timeout=300)
    return target


@pytest.mark.parametrize("page, index, kind, code, line",
                         SNIPPETS, ids=[f"{p.relative_to(DOCS)}[{i}]" for p, i, *_ in SNIPPETS])
def test_docs_snippet_runs(page, index, kind, code, line, tmp_path, request):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"), INVSOLVE_CACHE=str(tmp_path / "cache"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if "radiograph" in code and "ops.make" in code:
        site = request.getfixturevalue("plugin_site")
        env["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{page.relative_to(DOCS.parent)}:{line} ({kind} block {index}) failed:\n{code}\n" \
                                f"{run.stderr[-3000:]}"
    # output quoted in the snippet (the `# ...` lines right after a print) is what the current code prints
    quoted = re.findall(r"^print\(.*\n((?:# .*\n)+)", code, re.M)
    printed = [line.rstrip() for line in run.stdout.splitlines()]
    for comment in "".join(quoted).splitlines():
        expected = comment[2:].rstrip().removesuffix("(...)").rstrip()
        assert any(out.startswith(expected) for out in printed), \
            f"{page.relative_to(DOCS.parent)}:{line} quotes {expected!r}; the code prints:\n{run.stdout}"


def _public_api():
    """(qualified name, name, object) of every public function and class the docs must cover."""
    import importlib
    import inspect

    def functions(module):
        return [(n, o) for n, o in vars(module).items()
                if not n.startswith("_") and inspect.isfunction(o) and o.__module__ == module.__name__]

    api = []
    for name in ("invsolve", "invsolve.samplers", "invsolve.priors"):
        module = importlib.import_module(name)
        api += [(f"{name}.{n}", n, getattr(module, n)) for n in module.__all__]
    operators = importlib.import_module("operators")
    api += [(f"operators.{n}", n, getattr(operators, n)) for n in ("make", "names", "register", "describe")]
    for name in ("operators.testing", "operators.linalg", "invsolve.baselines", "invsolve.metrics"):
        api += [(f"{name}.{n}", n, o) for n, o in functions(importlib.import_module(name))]
    api += [("invsolve.reconstruct.reconstruct", "reconstruct", importlib.import_module("invsolve.reconstruct").reconstruct),
            ("invsolve.fit.prior_fit", "prior_fit", importlib.import_module("invsolve.fit").prior_fit)]
    return api


def test_every_public_function_has_a_docstring_and_is_in_the_docs():
    import types

    text = "\n".join(p.read_text() for p in [*DOCS.rglob("*.md"), DOCS.parent / "README.md"])
    api = _public_api()
    assert len(api) > 40
    undocumented, unmentioned = [], []
    for qualified, name, obj in api:
        if isinstance(obj, (types.FunctionType, type, types.ModuleType)) and not (obj.__doc__ or "").strip():
            undocumented.append(qualified)
        if not re.search(rf"[`.]{re.escape(name)}\b|\b{re.escape(name)}\(", text):  # `name`, x.name or name(
            unmentioned.append(qualified)
    assert not undocumented, f"public functions without a docstring: {undocumented}"
    assert not unmentioned, f"public names not mentioned in docs/ or README.md: {unmentioned}"
