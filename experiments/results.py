r"""Regenerates every study's aggregate, the README's summary table and the results page from the committed runs.

    python experiments/results.py            # rewrite docs/studies/*/{tables,figures,claims.*}, README.md, docs/results.md
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
_README = flags.DEFINE_string("readme", "README.md", "The README (its summary table is updated).")
_PAGE = flags.DEFINE_string("page", "docs/results.md", "The results page (its per-dataset sections are updated).")
_CHECK = flags.DEFINE_bool("check", False, "Compare instead of writing; exit 1 on any difference.")


def _read(path):
  with open(path) as f:
    return f.read()


def _diff(old: str, new: str, name: str) -> None:
  sys.stdout.writelines(difflib.unified_diff(
      old.splitlines(True), new.splitlines(True), name, "regenerated", n=1))


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    cli.reject_extra_arguments(argv)
  from mixlin_jax.analysis import results  # pylint: disable=import-outside-toplevel
  page_dir = os.path.dirname(os.path.abspath(_PAGE.value))
  folders = results.study_folders(_STUDIES.value)
  for folder, runs in results.unfinished_studies(_STUDIES.value).items():
    print(f"not a result yet, left out: {folder} (unfinished: "
          f"{', '.join(runs)})")
  links = [os.path.relpath(os.path.abspath(f), page_dir) for f in folders]
  progress = results.standing_progress(_STUDIES.value, page_dir)
  with cli.user_errors_reported():
    readme, page = _read(_README.value), _read(_PAGE.value)
    if not _CHECK.value:
      new_readme, new_page, _ = results.regenerate(folders, links, readme, page,
                                                    progress)
      for path, text in ((_README.value, new_readme), (_PAGE.value, new_page)):
        with open(path, "w") as f:
          f.write(text)
      print(f"Regenerated {len(folders)} studies, the summary of "
            f"{_README.value} and {_PAGE.value}.")
      return
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
      copies = []
      for folder in folders:
        copy = os.path.join(tmp, os.path.basename(os.path.normpath(folder)))
        shutil.copytree(os.path.join(folder, "runs"), os.path.join(copy, "runs"),
                        ignore=shutil.ignore_patterns("checkpoints", "log.txt"))
        copies.append(copy)
      new_readme, new_page, _ = results.regenerate(copies, links, readme, page,
                                                  progress)
      for path, old, new in ((_README.value, readme, new_readme),
                             (_PAGE.value, page, new_page)):
        if new != old:
          stale.append(path)
          _diff(old, new, path)
      for folder, copy in zip(folders, copies):
        for name in results.committed_files(copy):
          old = os.path.join(folder, name)
          if not os.path.exists(old) or _read(old) != _read(
              os.path.join(copy, name)):
            stale.append(old)
  if stale:
    print("stale (run python experiments/results.py): " + ", ".join(stale))
    sys.exit(1)
  print(f"Up to date: {len(folders)} studies, {_README.value} and {_PAGE.value}.")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser())
