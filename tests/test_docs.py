"""The documentation is tested: its Python examples run, its commands name real
scripts, configs and flags, and its relative links resolve.

Covers README.md and every ``docs/*.md`` page.  A fenced ``python`` block
runs as written, in a fresh interpreter in a scratch folder, unless the line
before its fence is ``<!-- docs-test: not run (REASON) -->`` (for blocks
that need a dataset or a GPU).  Every command line of a ``bash`` block that
runs a script of this repository (``python experiments/X.py``, ``python
tests/X.py``, ``bash experiments/X.sh``) must name an existing script; its
``--flags`` must be flags the script's ``--helpfull`` lists; its
``--config=configs/X.py[:variants]`` must load, and each
``--config.FIELD=VALUE`` must name a field of that config.  Links
``[text](path#anchor)`` to files of the repository must resolve, anchors
included (GitHub's heading slugs).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

from mixlin_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))
NOT_RUN = re.compile(r"<!--\s*docs-test:\s*not run\b")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
SCRIPT = re.compile(r"^(?:python3?|bash)\s+((?:experiments|tests)/\S+)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def page_id(path: str) -> str:
  return os.path.relpath(path, ROOT)


def fenced_blocks(text: str) -> list[tuple[str, int, str, bool]]:
  """``(language, first line number, code, not_run)`` of every fenced block."""
  blocks, lines = [], text.splitlines()
  i = 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if m is None:
      i += 1
      continue
    not_run = i > 0 and bool(NOT_RUN.search(lines[i - 1]))
    start, i = i + 1, i + 1
    while i < len(lines) and not lines[i].lstrip().startswith("```"):
      i += 1
    code = textwrap.dedent("\n".join(lines[start:i]))  # a fence in a list
    blocks.append((m[2], start + 1, code, not_run))
    i += 1
  return blocks


def python_blocks():
  for page in PAGES:
    with open(page) as f:
      for lang, line, code, not_run in fenced_blocks(f.read()):
        if lang == "python":
          yield pytest.param(code, not_run, id=f"{page_id(page)}:{line}")


def command_lines(code: str) -> list[str]:
  """The shell commands of a bash block: continuations joined, comments and
  prompts dropped, ``&&``/``;``/``|`` chains split."""
  joined = re.sub(r"\s*\\\n\s*", " ", code)
  out = []
  for line in joined.splitlines():
    line = re.sub(r"(^|\s)#.*$", "", line).strip()
    for part in re.split(r"&&|;|\|", line):
      part = part.strip()
      # what runs the script: nohup, nice -n N, /usr/bin/time, VAR=value
      part = re.sub(r"^((nohup|/usr/bin/time|nice(\s+-n\s*-?\d+)?|"
                    r"[A-Z_][A-Z0-9_]*=\S*)\s+)+", "", part)
      if part:
        out.append(part)
  return out


def repo_commands():
  for page in PAGES:
    with open(page) as f:
      for lang, line, code, _ in fenced_blocks(f.read()):
        if lang not in ("bash", "sh", "shell"):
          continue
        for cmd in command_lines(code):
          if SCRIPT.match(cmd):
            yield pytest.param(cmd, id=f"{page_id(page)}:{line}:{cmd[:60]}")


@functools.lru_cache(maxsize=None)
def script_flags(script: str) -> frozenset:
  """Flag names the script's ``--helpfull`` lists (absl or argparse)."""
  proc = subprocess.run([sys.executable, script, "--helpfull"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, f"{script} --helpfull failed: {proc.stderr}"
  names = set()
  for m in re.finditer(r"--(\[no\])?([A-Za-z][\w-]*)", proc.stdout):
    names.add(m[2])
    if m[1]:
      names.add("no" + m[2])
  return frozenset(names)


@functools.lru_cache(maxsize=None)
def load_config(spec: str):
  return config_lib.load_config_file(os.path.join(ROOT, spec))


def has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


@pytest.mark.parametrize("code,not_run", python_blocks())
def test_python_blocks_run(code, not_run, tmp_path):
  if not_run:
    pytest.skip("marked 'docs-test: not run'")
  script = tmp_path / "block.py"
  script.write_text(code)
  env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="Agg")
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("cmd", repo_commands())
def test_commands_name_real_scripts_configs_and_flags(cmd):
  words = shlex.split(cmd)
  script = words[1]
  assert os.path.exists(os.path.join(ROOT, script)), f"no script {script}"
  if not script.endswith(".py"):
    return
  known = script_flags(script)
  config = None
  for word in words[2:]:
    if not word.startswith("--"):
      continue
    name, _, value = word[2:].partition("=")
    if name.startswith("config."):
      continue
    assert name in known, f"{script} has no flag --{name}"
    if name == "config" and re.match(r"^configs/\w+\.py(:[\w,]*)?$", value):
      config = load_config(value)
  for word in words[2:]:
    if word.startswith("--config.") and config is not None:
      field = word[len("--config."):].partition("=")[0]
      assert has_field(config, field), f"no config field {field}"


def github_slug(heading: str) -> str:
  text = heading.strip().lower().replace("`", "")
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: str) -> frozenset:
  with open(path) as f:
    text = f.read()
  heads = [m[1] for m in re.finditer(r"^#+\s+(.*)$", text, re.M)]
  return frozenset(github_slug(h) for h in heads)


def relative_links():
  for page in PAGES:
    with open(page) as f:
      text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # not links in code
    for m in LINK.finditer(text):
      target = m[1]
      if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
        continue
      yield pytest.param(page, target, id=f"{page_id(page)}:{target}")


@pytest.mark.parametrize("page,target", relative_links())
def test_relative_links_resolve(page, target):
  path, _, anchor = target.partition("#")
  resolved = (os.path.normpath(os.path.join(os.path.dirname(page), path))
              if path else page)
  assert os.path.exists(resolved), f"{target}: no such file"
  if anchor and resolved.endswith(".md"):
    assert anchor in anchors(resolved), f"{target}: no heading #{anchor}"


def test_the_docs_test_sees_every_kind_of_mistake(tmp_path):
  """The parsers above find blocks, commands and links as intended."""
  text = ("x\n<!-- docs-test: not run (needs data) -->\n```python\n1/0\n```\n"
          "```bash\nnice -n 19 python experiments/run.py \\\n  --config=c.py "
          "&& python tests/x.py --a=1  # comment\n```\n")
  blocks = fenced_blocks(text)
  assert blocks[0] == ("python", 4, "1/0", True)
  assert command_lines(blocks[1][2]) == [
      "python experiments/run.py --config=c.py", "python tests/x.py --a=1"]
  assert github_slug("Studies: many seeds, `K` points") == (
      "studies-many-seeds-k-points")
  assert "bogus_flag" not in script_flags("experiments/run.py")
  assert "workdir" in script_flags("experiments/run.py")
  assert "noprogress" in script_flags("experiments/run.py")
  assert not has_field(load_config("configs/default.py"), "train.epoch")
  assert has_field(load_config("configs/default.py"), "train.epochs")
