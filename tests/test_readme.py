"""The README's Python examples run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = "<!-- not executed by the README test"


def _blocks():
    text = README.read_text()
    for match in re.finditer(r"```python\n(.*?)```", text, re.S):
        before = text[: match.start()].rstrip().splitlines()[-1]
        if not before.startswith(SKIP_MARK):
            yield match.group(1)


def test_readme_has_examples():
    assert len(list(_blocks())) >= 2


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for code in _blocks():
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "runs" / "readme-tokenizer" / "model.safetensors").is_file()
