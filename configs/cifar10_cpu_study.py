r"""CIFAR-10 at CPU scale: the study config for the paper's claims on 32x32 colour images.

Sized so that 4 regimes x 3 seeds run in well under two hours on a 2-core
CPU (measured: see docs/studies/cifar10_cpu/ and the README's Results):

    python experiments/make_array_file.py cifar10 --from=cifar-10-python.tar.gz --out=data/cifar10.npz
    python experiments/study.py --config=configs/cifar10_cpu_study.py \
        --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2 --out=docs/studies/cifar10_cpu
    python experiments/run.py --config=configs/cifar10_cpu_study.py:mix3 \
        --config.data.source=data/cifar10.npz --workdir=workdirs/c10cpu_mix3   # one run

What it trains: the first 10,000 training images of CIFAR-10 (a
class-balanced prefix), 1,000 of them labelled (10%, 100 per class) and
9,000 unlabelled; a narrow pre-activation WRN-10-1 (widths 16/32/64, one
block per group: stem, three residual blocks, pooled features and logits
are measured); 12 epochs of 156 steps at batch 64 labelled (+64 unlabelled
for the consistency regimes); test accuracy and linearity on the first
2,000 test images. The EMA decay (0.995, a ~200-step horizon) and the
consistency ramp-up (4 epochs) are shortened in proportion to the short
schedule; everything else is the base config.

The same config with its ':erm', ':supmix2', ':mix2', ':mix3' variants is
what ``study.py`` runs; any other regime name works too.

The committed study (docs/studies/cifar10_cpu) ran on a JPEG re-encoding
of CIFAR-10 (the original labels and splits; per-channel mean and std
within about 0.001 of the original's), decoded into the array file; the
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
  c.train.epochs = 12
  c.train.batch_size = 64
  c.train.unlabelled_batch_size = 64
  c.train.learning_rate = 0.05
  c.train.warmup_epochs = 1.0
  c.train.ema_decay = 0.995
  c.mixup.rampup_epochs = 4.0
  c.eval.batch_size = 500
  c.linearity.num_tuples = 192
  c.linearity.batch_size = 64
  return config_lib.finalize(c, arg)
