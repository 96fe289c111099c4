r"""CIFAR-10 at the paper's scale on one GPU: WRN-28-2, 4,000 labels, the full training set.

The study behind ``bash experiments/gpu_study.sh cifar10 ...`` (one device
call of at most 10 minutes: a few epochs, two seeds, eight runs at once with
``study.py --jobs``; see that script):

    python experiments/make_array_file.py cifar10 --from=cifar-10-python.tar.gz --out=data/cifar10.npz
    bash experiments/gpu_study.sh cifar10 data/cifar10.npz docs/studies/cifar10_gpu

or by hand, for a longer study:

    python experiments/study.py --config=configs/cifar10_gpu_study.py \
        --config.data.source=data/cifar10.npz --config.train.epochs=100 --jobs=8 \
        --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2 --out=studies/cifar10_gpu
    python experiments/run.py --config=configs/cifar10_gpu_study.py:mix2   # one run

All 50,000 training images (4,000 labelled, 400 per class), the whole test
set, batch 64 labelled + 128 unlabelled, bf16 compute on the accelerator.
The short default schedule (4 epochs of 781 steps, EMA decay 0.999,
consistency ramp-up over 3 epochs) is an estimate of what fits the
10-minute call with eight runs at once (no GPU run has measured it yet); it is
far from the hundreds of epochs of the literature (ICT: about 92.7% with
4,000 labels), so its accuracies are early-training ones.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.dataset_config("cifar10", "mix2")
  c.data.source = "data/cifar10.npz"
  c.train.epochs = 4
  c.train.warmup_epochs = 1.0
  c.mixup.rampup_epochs = 3.0
  c.train.log_every_steps = 100
  c.eval.batch_size = 1000
  c.linearity.num_tuples = 512
  c.linearity.batch_size = 256
  return config_lib.finalize(c, arg)
