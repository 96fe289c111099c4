r"""CIFAR-100, 10,000 labels, PreAct ResNet-18: 2-point mixup as an unsupervised ICT-style consistency loss on unlabelled images.

    python experiments/run.py --config=configs/cifar100_mix2.py --workdir=workdirs/cifar100_mix2
    python experiments/run.py --config=configs/cifar100_mix2.py:smoke   # seconds, wiring check

Data: TFDS 'cifar100' in --config.data.data_dir (docs/experiments.md, Data, says how to prepare it), or an
array file written from the public archive by experiments/make_array_file.py:

    python experiments/make_array_file.py cifar100 --from=cifar-100-python.tar.gz --out=data/cifar100.npz
    python experiments/run.py --config=configs/cifar100_mix2.py --config.data.source=data/cifar100.npz

Consistency settings are ICT's published ones (weight 100, EMA decay 0.999, ramp-up over
the first quarter of the 100 epochs, alpha 1.0; see base_config in mixlin_jax/config.py).
What it should reach: MixMatch (Berthelot et al., 2019) reports about 74% with 10,000 labels on the much wider WRN-28-8;
expect less with PreAct ResNet-18, and the erm config as the baseline to beat. These are literature figures for
orientation, not yet reproduced with this code.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  return config_lib.finalize(config_lib.dataset_config("cifar100", "mix2"), arg)
