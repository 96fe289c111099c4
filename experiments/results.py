r"""Regenerates every study's aggregate and the README's Results section from the committed runs.

    python experiments/results.py            # rewrite docs/studies/*/{tables,figures,claims.*} and README.md
    python experiments/results.py --check    # change nothing; exit 1 if anything committed is stale

Each study folder under ``--studies`` (default ``docs/studies``) holds its
runs' ``config.json`` and ``metrics.jsonl``; nothing is trained or
recomputed. Logic: ``mixlin_jax.analysis.results``.
"""

import difflib
import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags

from mixlin_jax import cli

_STUDIES = flags.DEFINE_string("studies", "docs/studies", "Folder of study folders.")
_README = flags.DEFINE_string("readme", "README.md", "The README to update.")
_CHECK = flags.DEFINE_bool("check", False, "Compare instead of writing; exit 1 on any difference.")


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    cli.reject_extra_arguments(argv)
  from mixlin_jax.analysis import results  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.abspath(_README.value))
  folders = results.study_folders(_STUDIES.value)
  links = [os.path.relpath(os.path.abspath(f), root) for f in folders]
  with open(_README.value) as f:
    readme = f.read()
  with cli.user_errors_reported():
    if not _CHECK.value:
      text, _ = results.regenerate(folders, links, readme)
      with open(_README.value, "w") as f:
        f.write(text)
      print(f"Regenerated {len(folders)} studies and the Results section of "
            f"{_README.value}.")
      return
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
      copies = []
      for folder in folders:
        copy = os.path.join(tmp, os.path.basename(os.path.normpath(folder)))
        shutil.copytree(os.path.join(folder, "runs"), os.path.join(copy, "runs"),
                        ignore=shutil.ignore_patterns("checkpoints", "log.txt"))
        copies.append(copy)
      text, _ = results.regenerate(copies, links, readme)
      if text != readme:
        stale.append(_README.value)
        sys.stdout.writelines(difflib.unified_diff(
            readme.splitlines(True), text.splitlines(True), _README.value,
            "regenerated", n=1))
      for folder, copy in zip(folders, copies):
        for name in results.committed_files(copy):
          old = os.path.join(folder, name)
          if not os.path.exists(old) or open(old).read() != open(
              os.path.join(copy, name)).read():
            stale.append(old)
  if stale:
    print("stale (run python experiments/results.py): " + ", ".join(stale))
    sys.exit(1)
  print(f"Up to date: {len(folders)} studies and {_README.value}.")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser())
