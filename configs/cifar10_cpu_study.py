r"""CIFAR-10 at CPU scale: the study config for the paper's claims on 32x32 colour images.

Sized so that 4 regimes x 3 seeds run in about two and a half hours on a
2-core CPU (measured: see docs/studies/cifar10_cpu/ and docs/results.md's
Results):

    python experiments/make_array_file.py cifar10 --from=cifar-10-python.tar.gz --out=data/cifar10.npz
    python experiments/study.py --config=configs/cifar10_cpu_study.py \
        --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2,3 --out=docs/studies/cifar10_cpu
    python experiments/run.py --config=configs/cifar10_cpu_study.py:mix3 \
        --config.data.source=data/cifar10.npz --workdir=workdirs/c10cpu_mix3   # one run

What it trains: the first 10,000 training images of CIFAR-10 (a
class-balanced prefix), 1,000 of them labelled (100 per class) and 9,000
unlabelled; a narrow pre-activation WRN-10-1 (widths 16/32/64, one block
per group: stem, three residual blocks, pooled features and logits are
measured); 23 epochs of 156 steps at batch 64 labelled (+64 unlabelled for
the consistency regimes), 3,588 steps; test accuracy and linearity on the
first 2,000 test images.

Against ICT's published settings (consistency weight 100, EMA decay 0.999,
ramp-up over the first quarter of training, alpha 1.0): the weight, alpha
and the ramp-up (6 of 23 epochs) are ICT's; the EMA decay is 0.99. Chosen
by the pilot in docs/studies/cifar10_cpu/pilot.md (erm vs mix2, seed 10):
with ICT's 0.999 the teacher lags the student by far over 3,588 steps
(teacher accuracy 0.18 after 11 epochs in the 5,000-image pilot) and mix2
ends 0.05 below erm; with 0.99 it ends 0.028 above erm. The first
CIFAR-10 study (docs/studies/cifar10_cpu_12ep: 12 epochs, consistency
weight 10, EMA 0.995, ramp-up 4) gained nothing over erm.

The committed study ran on a JPEG re-encoding of CIFAR-10 (the original
labels and splits; per-channel mean and std within about 0.001 of the
original's), decoded into the array file by ../shared/data/cifar10.py; the
pixels differ slightly from the original archive's, which
``experiments/make_array_file.py`` reads.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.dataset_config("cifar10", "mix2")
  c.data.source = "data/cifar10.npz"
  c.data.num_train = 10_000
  c.data.num_test = 2_000
  c.data.num_labels = 1_000
  c.model.name = "wrn10_1"
  c.train.epochs = 23
  c.train.batch_size = 64
  c.train.unlabelled_batch_size = 64
  c.train.learning_rate = 0.05
  c.train.warmup_epochs = 1.0
  c.train.ema_decay = 0.99  # not ICT's 0.999: see the docstring
  c.mixup.consistency_weight = 100.0  # ICT's
  c.mixup.rampup_epochs = 6.0  # a quarter of training, as ICT
  c.eval.batch_size = 500
  c.linearity.num_tuples = 192
  c.linearity.batch_size = 64
  return config_lib.finalize(c, arg)
