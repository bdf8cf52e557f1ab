"""The README's library examples run as written (they are the documentation users copy)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_library_examples_run(capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    library = [b for b in blocks if "import pile_jax as pj" in b or b.lstrip().startswith("pj.")]
    assert len(library) == 2
    namespace: dict = {}
    exec(compile("\n".join(library), "README.md", "exec"), namespace)
    assert "| pile | ensemble |" in capsys.readouterr().out
