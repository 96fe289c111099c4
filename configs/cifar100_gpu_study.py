r"""CIFAR-100 at the paper's label budget on one GPU: 10,000 labels, the full training set, WRN-28-2.

The study behind ``bash experiments/gpu_study.sh cifar100 ...`` (one device
call of at most 10 minutes, several runs at once with ``study.py --jobs``):

    python ../shared/data/cifar100.py data/cifar100.npz     # or, from the public archive:
    python experiments/make_array_file.py cifar100 --from=cifar-100-python.tar.gz --out=data/cifar100.npz
    bash experiments/gpu_study.sh cifar100 data/cifar100.npz docs/studies/cifar100_gpu

or by hand, for a longer study:

    python experiments/study.py --config=configs/cifar100_gpu_study.py \
        --config.data.source=data/cifar100.npz --config.train.epochs=100 --jobs=8 \
        --regimes=erm,supmix2,mix2,mix3 --seeds=0,1,2 --out=studies/cifar100_gpu
    python experiments/run.py --config=configs/cifar100_gpu_study.py:mix2   # one run

All 50,000 training images (10,000 labelled, 100 per class), the whole test
set, batch 64 labelled + 128 unlabelled, bf16 compute on the accelerator.
WRN-28-2 rather than the PreAct ResNet-18 of ``configs/cifar100_*.py``:
about a sixth of its compute, so that eight runs share one GPU in one call,
and the model of the CIFAR-10 GPU study, so the two datasets differ in the
data only. The short schedule (EMA decay 0.999, consistency ramp-up over 3
epochs) gives early-training accuracies, far from the literature's
(MixMatch: about 74% with 10,000 labels on WRN-28-8, hundreds of epochs).
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.dataset_config("cifar100", "mix2")
  c.data.source = "data/cifar100.npz"
  c.model.name = "wrn28_2"
  c.train.epochs = 4
  c.train.warmup_epochs = 1.0
  c.mixup.rampup_epochs = 3.0
  c.train.log_every_steps = 100
  c.eval.batch_size = 1000
  c.linearity.num_tuples = 512
  c.linearity.batch_size = 256
  return config_lib.finalize(c, arg)
