"""experiments/results.py: the README's summary, the results page and the studies' tables are regenerated, and --check catches drift."""
import os
import subprocess
import sys

from mixlin_jax.analysis import results

from test_study_stats import write_synthetic_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "results.py")


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def _write_pages(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("# Title\n\nHand-written text.\n\n"
                    f"{results.SUMMARY_BEGIN}\nold\n{results.SUMMARY_END}\n"
                    "\nAfter.\n")
  (tmp_path / "docs").mkdir(exist_ok=True)
  page = tmp_path / "docs" / "results.md"
  page.write_text("# Results\n\nProse.\n\n"
                  f"{results.BEGIN}\nold\n{results.END}\n\nEnd.\n")
  return readme, page


def test_regenerate_then_check_then_detect_drift(tmp_path):
  studies = tmp_path / "docs" / "studies"
  write_synthetic_study(str(studies / "synthetic"))
  readme, page = _write_pages(tmp_path)
  args = (f"--studies={studies}", f"--readme={readme}", f"--page={page}")
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr
  text = readme.read_text()
  assert "Hand-written text." in text and "After." in text
  assert "\nold\n" not in text
  assert "| (a) supmix2 | supported |" in text  # the summary table
  page_text = page.read_text()
  assert "Prose." in page_text and "End." in page_text
  assert "\nold\n" not in page_text
  assert "| (a) | supmix2 | **supported** |" in page_text
  assert "| (b) | mix2 | **contradicted** |" in page_text
  # links relative to the page: docs/results.md -> docs/studies/...
  assert "(studies/synthetic/figures/paired_differences.png)" in page_text
  assert (studies / "synthetic" / "tables" / "paired_differences.csv").exists()

  ok = _run(*args, "--check")
  assert ok.returncode == 0, ok.stdout + ok.stderr
  assert "Up to date: 1 studies" in ok.stdout

  readme.write_text(text.replace("| supported |", "| contradicted |", 1))
  stale = _run(*args, "--check")
  assert stale.returncode == 1
  assert "stale" in stale.stdout and str(readme) in stale.stdout
  readme.write_text(text)

  page.write_text(page_text.replace("**supported**", "**contradicted**", 1))
  stale = _run(*args, "--check")
  assert stale.returncode == 1 and str(page) in stale.stdout
  page.write_text(page_text)

  table = studies / "synthetic" / "tables" / "accuracy.csv"
  table.write_text(table.read_text().replace("0.8", "0.9", 1))
  stale = _run(*args, "--check")
  assert stale.returncode == 1 and str(table) in stale.stdout


def test_missing_markers_is_a_clear_error(tmp_path):
  studies = tmp_path / "studies"
  write_synthetic_study(str(studies / "s"), regimes=("erm", "mix2"),
                        seeds=(0, 1))
  readme, page = _write_pages(tmp_path)
  readme.write_text("# no markers\n")
  proc = _run(f"--studies={studies}", f"--readme={readme}", f"--page={page}")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: the README has no results markers")
  readme, page = _write_pages(tmp_path)
  page.write_text("# no markers\n")
  proc = _run(f"--studies={studies}", f"--readme={readme}", f"--page={page}")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: the results page has no results "
                                "markers")


def test_committed_results_are_up_to_date():
  """The README's summary, docs/results.md and every committed study table
  regenerate exactly."""
  proc = _run("--check")
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_cross_study_summary_table(tmp_path):
  from mixlin_jax.analysis import study as study_lib  # pylint: disable=import-outside-toplevel
  works, fails = str(tmp_path / "works"), str(tmp_path / "fails")
  write_synthetic_study(works)
  write_synthetic_study(fails, regimes=("erm", "mix2"),
                        accuracy=lambda r, s, e: 0.5 + 0.01 * s)
  md = results.summary_markdown([study_lib.aggregate(works),
                                 study_lib.aggregate(fails)])
  lines = md.splitlines()
  assert lines[0] == "| claim / regime | `works` | `fails` |"
  assert lines[2] == "| precondition: mix2 ends above erm | holds | fails |"
  assert lines[3] == "| precondition: mix3 ends above erm | holds | - |"
  assert "| (a) supmix2 | supported | - |" in lines
  assert "| (b) mix2 | contradicted | not tested |" in lines
  assert "| (c) mix2 | supported | not tested |" in lines
  assert any(l.startswith("| (K) mix3 - mix2: epochs to erm's final accuracy"
                          " | 0 [0, 0] | - |") for l in lines)
