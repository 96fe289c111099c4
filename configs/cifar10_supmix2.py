r"""CIFAR-10, 4,000 labels, WRN-28-2: supervised 2-point mixup on the labelled images.

    python experiments/run.py --config=configs/cifar10_supmix2.py --workdir=workdirs/cifar10_supmix2
    python experiments/run.py --config=configs/cifar10_supmix2.py:smoke   # seconds, wiring check

Data: TFDS 'cifar10' in --config.data.data_dir (docs/experiments.md, Data, says how to prepare it), or an
array file written from the public archive by experiments/make_array_file.py:

    python experiments/make_array_file.py cifar10 --from=cifar-10-python.tar.gz --out=data/cifar10.npz
    python experiments/run.py --config=configs/cifar10_supmix2.py --config.data.source=data/cifar10.npz

Consistency settings are ICT's published ones (weight 100, EMA decay 0.999, ramp-up over
the first quarter of the 100 epochs, alpha 1.0; see base_config in mixlin_jax/config.py).
What it should reach: ICT (Verma et al., 2019) reports about 92.7% test accuracy with 4,000 labels and WRN-28-2; labelled-only training reaches roughly 80%. These are literature figures for
orientation, not yet reproduced with this code.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  return config_lib.finalize(config_lib.dataset_config("cifar10", "supmix2"), arg)
