r"""SVHN, 1,000 labels, WRN-28-2: 2-point mixup as an unsupervised ICT-style consistency loss on unlabelled images.

    python experiments/run.py --config=configs/svhn_mix2.py --workdir=workdirs/svhn_mix2
    python experiments/run.py --config=configs/svhn_mix2.py:smoke   # seconds, wiring check

Data: TFDS 'svhn_cropped' in --config.data.data_dir (docs/experiments.md, Data, says how to prepare it), or an
array file written from the public archive by experiments/make_array_file.py:

    python experiments/make_array_file.py svhn_cropped --from=DIR_WITH_THE_MAT_FILES --out=data/svhn.npz
    python experiments/run.py --config=configs/svhn_mix2.py --config.data.source=data/svhn.npz

Consistency settings are ICT's published ones (weight 100, EMA decay 0.999, ramp-up over
the first quarter of the 100 epochs, alpha 0.1; see base_config in mixlin_jax/config.py).
What it should reach: ICT reports about 96% test accuracy with 1,000 labels and WRN-28-2. These are literature figures for
orientation, not yet reproduced with this code.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  return config_lib.finalize(config_lib.dataset_config("svhn_cropped", "mix2"), arg)
