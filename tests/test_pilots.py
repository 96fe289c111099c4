"""experiments/pilot_table.py: the table that chooses a study's setting."""
import os
import subprocess
import sys

from mixlin_jax.analysis import pilots

from test_study_stats import write_synthetic_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pilot_table_names_the_setting_and_the_precondition(tmp_path):
  short, long = str(tmp_path / "short"), str(tmp_path / "long")
  # short: mix2 no better than erm; long: mix2 ahead in every seed
  write_synthetic_study(short, regimes=("erm", "mix2"), epochs=4,
                        accuracy=lambda r, s, e: 0.5 + 0.01 * s)
  write_synthetic_study(long, regimes=("erm", "mix2"), epochs=6,
                        accuracy=lambda r, s, e: (0.6 if r == "mix2" else 0.5)
                        + 0.01 * s)
  rows = pilots.pilot_rows([short, long])
  assert [r["setting"] for r in rows] == [{"train.epochs": 4},
                                          {"train.epochs": 6}]
  holds = [{p["regime"]: p["holds"] for p in r["precondition"]} for r in rows]
  assert holds == [{"mix2": False}, {"mix2": True}]
  md = pilots.pilot_markdown(rows)
  lines = md.splitlines()
  assert lines[0].startswith("| pilot | train.epochs | seeds | erm test acc.")
  assert lines[2].startswith("| short | 4 | 0,1,2 | 0.51 +- 0.01 | 0.51 +- 0.01 | 0 [0, 0] |")
  assert "| 0.1 [0.1, 0.1] **holds** |" in lines[3]


def test_pilot_table_command(tmp_path):
  folder = str(tmp_path / "p")
  write_synthetic_study(folder, regimes=("erm", "mix2"), seeds=(0, 1))
  out = tmp_path / "pilot.md"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "pilot_table.py"),
       folder, f"--out={out}", "--title=# Pilot"], capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert out.read_text().startswith("# Pilot\n\n| pilot |")
  assert "| p |" in proc.stdout
  bad = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "pilot_table.py")],
      capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.startswith("error: ")
