r"""The offline default: 3-point unsupervised mixup on scikit-learn's digits.

Runs anywhere with no network (the 1,797 8x8 digit images ship inside
scikit-learn): 100 labelled images (10 per class), the other 1,337 training
images unlabelled, a small CNN, 3-point mixup as an ICT-style consistency
loss with an EMA teacher. About a minute on two CPU cores.

    python experiments/run.py --config=configs/default.py
    python experiments/run.py --config=configs/default.py:erm --workdir=workdirs/default_erm

Variants after ':' (comma-separated): erm, supmixK, mixK, smoke.
Reaches well above chance (10%) on the 360 held-out digits: see README for
the measured figure.
"""

from mixlin_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.data.dataset = "digits"
  c.data.source = "embedded"
  c.data.num_labels = 100
  c.data.crop_padding = 1
  c.data.flip = False  # digits are not mirror-symmetric
  c.model.name = "cnn"
  config_lib.apply_regime(c, "mix3")
  c.mixup.rampup_epochs = 3.0
  c.train.epochs = 12
  c.train.batch_size = 32
  c.train.unlabelled_batch_size = 64
  c.train.learning_rate = 0.05
  c.train.warmup_epochs = 0.5
  c.train.ema_decay = 0.99
  c.train.log_every_steps = 11
  c.eval.batch_size = 360
  c.linearity.num_tuples = 256
  c.linearity.batch_size = 128
  return config_lib.finalize(c, arg)
