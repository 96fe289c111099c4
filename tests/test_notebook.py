"""experiments/colab_tpu.ipynb: valid nbformat 4, and runs top to bottom on CPU.

The notebook's code cells are executed in order, in one namespace, in a
fresh Python process with one CPU device (no Colab, no TPU, so the notebook
takes its ``SMOKE`` path: ``configs/default.py:smoke`` on the embedded
digits). IPython lines (``!cmd``, ``%magic``) are replaced by ``pass`` with
their indentation, so a shell command inside an ``if IN_COLAB:`` block
leaves valid Python behind. Connections to anything but loopback raise, so
the run provably needs no network.
"""
import json
import os
import re
import subprocess
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")

_RUNNER = r"""
import json, re, socket, sys, time

_connect = socket.socket.connect
def _loopback_only(self, address):
  host = address[0] if isinstance(address, tuple) else address
  if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") \
      and not host.startswith("/"):
    raise OSError(f"network access attempted by the notebook: {address!r}")
  return _connect(self, address)
socket.socket.connect = _loopback_only

def python_source(cell):
  lines = "".join(cell["source"]).splitlines()
  return "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", l) for l in lines) + "\n"

nb = json.load(open(sys.argv[1]))
code = [python_source(c) for c in nb["cells"] if c["cell_type"] == "code"]
ns = {"__name__": "__main__"}
times = []
for i, src in enumerate(code):
  t0 = time.perf_counter()
  exec(compile(src, f"<notebook code cell {i}>", "exec"), ns)
  times.append(round(time.perf_counter() - t0, 2))

# The fallback plotting path (used when mixlin_jax.analysis is absent).
fallback = ns["figures_with_matplotlib"](ns["WORKDIR"], ns["FIG_DIR"])
# Rerunning the train cell (as after a preemption) resumes: nothing to redo.
train_cell = next(s for s in code if "train_and_evaluate(" in s)
exec(compile(train_cell, "<train cell again>", "exec"), ns)
print("NOTEBOOK_RESULT " + json.dumps({
    "smoke": ns["SMOKE"], "in_colab": ns["IN_COLAB"], "workdir": ns["WORKDIR"],
    "figures": ns["FIGURES"], "fallback": fallback, "cell_seconds": times,
    "epochs": [r["epoch"] for r in ns["records"]]}), flush=True)
"""


def load_notebook():
  with open(NOTEBOOK) as f:
    return json.load(f)


def test_notebook_is_valid_nbformat4():
  nb = load_notebook()
  assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
  assert nb["metadata"]["kernelspec"]["language"] == "python"
  assert nb["cells"]
  ids = [c["id"] for c in nb["cells"]]
  assert len(set(ids)) == len(ids)  # required unique ids (nbformat >= 4.5)
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("code", "markdown")
    assert isinstance(cell["metadata"], dict)
    assert isinstance(cell["source"], list)
    assert all(isinstance(line, str) for line in cell["source"])
    if cell["cell_type"] == "code":  # committed without outputs
      assert cell["outputs"] == [] and cell["execution_count"] is None
    else:
      assert "outputs" not in cell and "execution_count" not in cell
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  assert "jax.device_count()" in code[0] and "default_backend()" in code[0]
  assert "SMOKE = not on_tpu" in code[0]
  text = "\n".join(code)
  for needle in ("drive.mount", "configs/cifar10_mix3.py", "configs/default.py",
                 "train.train_and_evaluate(", "pip install"):
    assert needle in text, needle


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  env.update(JAX_PLATFORMS="cpu", MIXLIN_NOTEBOOK_WORKDIR=str(tmp_path),
             MIXLIN_REPO_DIR=ROOT)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES"):
    env.pop(name, None)
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", _RUNNER, NOTEBOOK], env=env,
                        cwd=str(tmp_path), capture_output=True, text=True,
                        timeout=300)
  wall = time.monotonic() - start
  out = proc.stdout + proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith("NOTEBOOK_RESULT ")]
  assert proc.returncode == 0 and lines, out[-6000:]
  result = json.loads(lines[-1][len("NOTEBOOK_RESULT "):])
  assert result["smoke"] is True and result["in_colab"] is False
  assert result["workdir"].startswith(str(tmp_path))
  assert result["epochs"] == [1, 2]
  assert "Resuming" in proc.stdout and "after epoch 2 of 2" in proc.stdout
  assert "epoch 2: loss" in proc.stdout
  with open(os.path.join(result["workdir"], "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  assert [r["epoch"] for r in records] == [1, 2]
  assert all("linearity" in r for r in records)
  figures = result["figures"] + result["fallback"]
  assert len(figures) == 4
  for path in figures:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
  # Imports, one compile per jitted function, 2 x 12 steps, figures.
  print(f"notebook: {wall:.1f}s wall; per cell {result['cell_seconds']}")
  assert wall < 150, f"the CPU smoke notebook took {wall:.0f}s"
