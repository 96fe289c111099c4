r"""Tabulates a pilot: final accuracies and the claims' precondition for each candidate setting.

    python experiments/pilot_table.py workdirs/pilots/digits/* --out=docs/studies/digits/pilot.md

Each argument is a study folder (``<folder>/runs/<regime>_seed<seed>/``, as
``experiments/study.py --out=FOLDER`` writes it) run with one candidate
setting. Prints, and with ``--out`` writes, one Markdown row per folder:
the config fields that differ between the folders, every regime's final
test accuracy (mean +- std over seeds) and the paired difference mixK -
baseline with its 95% interval, marked **holds** where the precondition of
claims (b) and (c) holds. Logic: ``mixlin_jax.analysis.pilots``.
"""

from absl import app
from absl import flags

from mixlin_jax import cli

_OUT = flags.DEFINE_string("out", None, "Also write the table to this file.")
_BASELINE = flags.DEFINE_string("baseline", "erm", "The baseline regime.")
_TITLE = flags.DEFINE_string("title", None, "A heading line for --out.")


def main(argv):
  cli.setup_logging()
  with cli.user_errors_reported():
    folders = argv[1:]
    if not folders:
      raise cli.UsageError("name one or more pilot study folders")
    from mixlin_jax.analysis import pilots  # pylint: disable=import-outside-toplevel
    text = pilots.pilot_markdown(pilots.pilot_rows(folders, _BASELINE.value),
                                 _BASELINE.value)
  print(text, end="")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      if _TITLE.value:
        f.write(f"{_TITLE.value}\n\n")
      f.write(text)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser())
