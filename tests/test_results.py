"""experiments/results.py: the README's summary, the results page and the studies' tables are regenerated, and --check catches drift."""
import glob
import json
import os
import subprocess
import sys

import pytest

from mixlin_jax.analysis import results

from test_study_stats import write_synthetic_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "results.py")


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def _set_dataset(folder, dataset):
  """Makes a synthetic study's runs claim another ``data.dataset``."""
  for path in glob.glob(os.path.join(folder, "runs", "*", "config.json")):
    with open(path) as f:
      record = json.load(f)
    record["config"]["data.dataset"] = dataset
    with open(path, "w") as f:
      json.dump(record, f)


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
  # named as the study that stands for the digits, with every run it plans
  write_synthetic_study(str(studies / "digits"), seeds=(0, 1, 2, 3, 4))
  # CIFAR-100's standing study half-way: 3 of its 12 runs finished, a pilot
  running = studies / "cifar100_cpu"
  write_synthetic_study(str(running), regimes=("erm", "mix2"), seeds=(0, 1),
                        incomplete=("mix2_seed1",))
  _set_dataset(str(running), "cifar100")
  (running / "pilot.md").write_text("# Pilot\n")
  readme, page = _write_pages(tmp_path)
  args = (f"--studies={studies}", f"--readme={readme}", f"--page={page}")
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr
  text = readme.read_text()
  assert "Hand-written text." in text and "After." in text
  assert "\nold\n" not in text
  assert ("| (a) supmix2 | supported | not run yet | in progress (3/12 runs) "
          "| not run (no data) | one dataset only |") in text  # the summary
  assert "not a result yet, left out:" in proc.stdout
  page_text = page.read_text()
  assert "Prose." in page_text and "End." in page_text
  assert "\nold\n" not in page_text
  assert "| (a) | supmix2 | **supported** |" in page_text
  assert "| (b) | mix2 | **contradicted** |" in page_text
  # links relative to the page: docs/results.md -> docs/studies/...
  assert "(studies/digits/figures/paired_differences.png)" in page_text
  assert (studies / "digits" / "tables" / "paired_differences.csv").exists()
  assert "its pilot [pilot.md](studies/cifar100_cpu/pilot.md)" in page_text

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

  table = studies / "digits" / "tables" / "accuracy.csv"
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


def test_datasets_agree_column():
  assert results.agreement({}) == "-"
  assert results.agreement({"digits": "supported"}) == "one dataset only"
  assert results.agreement({"digits": "mixed", "CIFAR-10": "mixed"}) == (
      "yes: mixed")
  assert results.agreement({"digits": "mixed", "CIFAR-10": "supported"}) == (
      "no: digits mixed, CIFAR-10 supported")
  # a claim not tested (precondition failed) is no verdict: left out, named
  assert results.agreement({"digits": "not tested", "CIFAR-10": "supported",
                            "CIFAR-100": "supported"}) == (
      "yes: supported (not tested on digits)")
  assert results.agreement({"digits": "not tested",
                            "CIFAR-10": "supported"}) == (
      "one dataset only (not tested on digits)")
  assert results.agreement({"digits": "not tested"}) == "not tested"
  # nor is a (K) pair whose regimes never reach the target
  assert results.agreement({"digits": "interval covers 0",
                            "CIFAR-10": "interval covers 0",
                            "CIFAR-100": "not reached"}) == (
      "yes: interval covers 0 (not reached on CIFAR-100)")
  assert results.agreement({"CIFAR-100": "not reached"}) == "not reached"


def test_k_pair_never_reaching_the_target_is_no_interval(tmp_path):
  """Where mix2 and mix3 never reach erm's final accuracy in any seed, both
  count as final epoch + 1: their difference is 0 [0, 0] by construction,
  which must not read as a measured "covers 0"."""
  from mixlin_jax.analysis import study as study_lib  # pylint: disable=import-outside-toplevel
  folder = str(tmp_path / "digits")
  write_synthetic_study(
      folder, accuracy=lambda r, s, e: 0.3 if r.startswith("mix") else 0.6)
  rows = {key: (cell, verdict) for key, _, cell, verdict
          in results.study_rows(study_lib.aggregate(folder))}
  assert rows["(K) mix3 - mix2"] == ("not reached", "not reached")
  # one seed reaching it is a measured difference again
  folder = str(tmp_path / "digits_one_reaches")
  write_synthetic_study(
      folder, accuracy=lambda r, s, e: (
          0.7 if (r, s) == ("mix3", 0) and e > 3 else
          0.3 if r.startswith("mix") else 0.6))
  rows = {key: (cell, verdict) for key, _, cell, verdict
          in results.study_rows(study_lib.aggregate(folder))}
  assert rows["(K) mix3 - mix2"][1] != "not reached"


def test_the_declared_datasets():
  by_key = {ds.key: ds for ds in results.DATASETS}
  assert [ds.title for ds in results.DATASETS] == [
      "digits", "CIFAR-10", "CIFAR-100", "SVHN"]
  assert by_key["digits"].standing == "digits"
  assert by_key["cifar10"].standing == "cifar10_cpu"
  assert by_key["cifar100"].standing == "cifar100_cpu"
  assert by_key["svhn_cropped"].standing is None
  assert by_key["cifar10"].superseded == {
      "cifar10_cpu_12ep": results.BEFORE_PRECONDITION}
  assert by_key["cifar100"].study_command() == (
      "python experiments/study.py --config=configs/cifar100_cpu_study.py "
      "--config.data.source=data/cifar100.npz "
      "--regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2 "
      "--out=docs/studies/cifar100_cpu")


def test_cross_dataset_summary_table(tmp_path):
  from mixlin_jax.analysis import study as study_lib  # pylint: disable=import-outside-toplevel
  works, fails = str(tmp_path / "digits"), str(tmp_path / "cifar10_cpu")
  write_synthetic_study(works, seeds=(0, 1, 2, 3, 4))
  write_synthetic_study(fails, accuracy=lambda r, s, e: 0.5 + 0.01 * s)
  _set_dataset(fails, "cifar10")
  md = results.summary_markdown(
      [study_lib.aggregate(works), study_lib.aggregate(fails)],
      {"cifar100": results.Progress(5)})
  lines = md.splitlines()
  assert lines[0] == ("| claim / regime | digits (`digits`) | CIFAR-10 "
                      "(`cifar10_cpu`) | CIFAR-100 (`cifar100_cpu`) | SVHN "
                      "| datasets agree? |")
  rest = " | in progress (5/12 runs) | not run (no data) |"
  assert lines[2] == ("| precondition: mix2 ends above erm | holds | fails"
                      + rest + " no: digits holds, CIFAR-10 fails |")
  assert ("| (b) mix2 | contradicted | not tested" + rest
          + " one dataset only (not tested on CIFAR-10) |") in lines
  assert ("| (c) mix2 | supported | not tested" + rest
          + " one dataset only (not tested on CIFAR-10) |") in lines
  assert any(l.startswith("| (K) mix3 - mix2: epochs to erm's final accuracy"
                          " | 0 [0, 0] |") for l in lines)
  # without a folder on disk the dataset is not run yet
  md = results.summary_markdown([study_lib.aggregate(works)])
  assert "| (a) supmix2 | supported | not run yet | not run yet | not run " \
         "(no data) | one dataset only |" in md.splitlines()


def test_results_page_per_dataset(tmp_path):
  from mixlin_jax.analysis import study as study_lib  # pylint: disable=import-outside-toplevel
  small = dict(regimes=("erm", "mix2"), seeds=(0, 1))
  folders = {"digits": dict(seeds=(0, 1, 2, 3, 4)), "digits_12ep": small,
             "digits_extra": small, "cifar10_cpu": small, "other": small}
  for name, kwargs in folders.items():
    write_synthetic_study(str(tmp_path / name), **kwargs)
  _set_dataset(str(tmp_path / "cifar10_cpu"), "cifar10")
  _set_dataset(str(tmp_path / "other"), "mnist")
  aggs = [study_lib.aggregate(str(tmp_path / n)) for n in sorted(folders)]
  links = [f"studies/{n}" for n in sorted(folders)]
  page = results.section(aggs, links, {
      "cifar10": results.Progress(4),
      "cifar100": results.Progress(5, "studies/cifar100_cpu/pilot.md")})
  heads = [l for l in page.splitlines() if l.startswith("#")]
  assert heads == [
      "## digits",
      "### `digits`: digits, cnn, 100 labels",
      "### `digits_12ep` (superseded: tested before the precondition held): "
      "digits, cnn, 100 labels",
      "### `digits_extra` (not the study digits stands on): digits, cnn, "
      "100 labels",
      "## CIFAR-10",  # 4 of 12 runs: not a result, no section of its own
      "## CIFAR-100",
      "## SVHN",
      "## Other: mnist",
      "### `other`: mnist, cnn, 100 labels"]
  assert ("Not run yet: `cifar10_cpu` is in progress (4/12 runs), not a "
          "result until every run has finished.") in page
  assert "its pilot [pilot.md](studies/cifar100_cpu/pilot.md)" in page
  assert ("--config=configs/cifar100_cpu_study.py "
          "--config.data.source=data/cifar100.npz") in page
  assert "Not run: no copy of SVHN is available here." in page
  assert ("python experiments/make_array_file.py svhn_cropped "
          "--from=DIR_WITH_MAT_FILES --out=data/svhn.npz") in page
  assert "--config=configs/svhn_mix2.py --config.data.source=data/svhn.npz" \
      in page


def test_a_standing_study_on_another_dataset_is_an_error(tmp_path):
  from mixlin_jax.analysis import study as study_lib  # pylint: disable=import-outside-toplevel
  folder = str(tmp_path / "digits")
  write_synthetic_study(folder, regimes=("erm", "mix2"), seeds=(0, 1))
  _set_dataset(folder, "cifar10")
  with pytest.raises(results.ResultsError, match="stands for digits"):
    results.summary_markdown([study_lib.aggregate(folder)])


def test_a_standing_study_is_a_result_only_once_every_planned_run_finished(tmp_path):
  """A dataset's standing study whose started runs have all finished, but
  which has not started the rest of its plan, is still in progress: left
  out (its runs not started named), not aggregated into claims of two
  regimes."""
  root = str(tmp_path / "studies")
  folder = os.path.join(root, "cifar100_cpu")
  write_synthetic_study(folder, regimes=("erm", "supmix2"), seeds=(0,))
  assert folder not in results.study_folders(root)
  left_out = results.unfinished_studies(root)[folder]
  assert "mix2_seed0 (not started)" in left_out
  assert "mix3_seed2 (not started)" in left_out and len(left_out) == 10
  # Every planned run finished: a result.
  complete = os.path.join(str(tmp_path / "complete"), "cifar100_cpu")
  write_synthetic_study(complete, seeds=(0, 1, 2))
  assert results.study_folders(os.path.dirname(complete)) == [complete]
