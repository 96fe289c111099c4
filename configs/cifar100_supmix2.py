r"""CIFAR-100, 10,000 labels, PreAct ResNet-18: supervised 2-point mixup on the labelled images.

    python experiments/run.py --config=configs/cifar100_supmix2.py --workdir=workdirs/cifar100_supmix2
    python experiments/run.py --config=configs/cifar100_supmix2.py:smoke   # seconds, wiring check

Data: TFDS 'cifar100' in --config.data.data_dir (see README to prepare it), or an
array file: --config.data.source=/path/cifar100.npz.
What it should reach: MixMatch (Berthelot et al., 2019) reports about 74% with 10,000 labels on the much wider WRN-28-8;
expect less with PreAct ResNet-18, and the erm config as the baseline to beat. These are literature figures for
orientation, not yet reproduced with this code.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  return config_lib.finalize(config_lib.dataset_config("cifar100", "supmix2"), arg)
