r"""SVHN, 1,000 labels, WRN-28-2: 2-point mixup as an unsupervised ICT-style consistency loss on unlabelled images.

    python experiments/run.py --config=configs/svhn_mix2.py --workdir=workdirs/svhn_mix2
    python experiments/run.py --config=configs/svhn_mix2.py:smoke   # seconds, wiring check

Data: TFDS 'svhn_cropped' in --config.data.data_dir (see README to prepare it), or an
array file: --config.data.source=/path/svhn.npz.
What it should reach: ICT reports about 96% test accuracy with 1,000 labels and WRN-28-2. These are literature figures for
orientation, not yet reproduced with this code.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  return config_lib.finalize(config_lib.dataset_config("svhn_cropped", "mix2"), arg)
