r"""Turns a public CIFAR-10, CIFAR-100 or SVHN download into the array file runs read.

    python experiments/make_array_file.py cifar10 --from=cifar-10-python.tar.gz --out=data/cifar10.npz
    python experiments/make_array_file.py cifar100 --from=cifar-100-python.tar.gz --out=data/cifar100.npz
    python experiments/make_array_file.py svhn_cropped --from=DIR_WITH_MAT_FILES --out=data/svhn.npz
    python experiments/make_array_file.py cifar10 --from=... --out=data/c10_small.npz --train=5000 --test=1000

Then train with ``--config.data.source=data/cifar10.npz``. The archives are
the ones their authors publish: https://www.cs.toronto.edu/~kriz/cifar.html
(the "python version") and http://ufldl.stanford.edu/housenumbers/ (format
2, cropped digits). ``--train``/``--test`` keep a class-balanced prefix.
Logic: ``mixlin_jax.archives``.
"""

from absl import app
from absl import flags

from mixlin_jax import cli

_FROM = flags.DEFINE_string("from", None, "The downloaded archive (SVHN: the folder of the .mat files).")
_OUT = flags.DEFINE_string("out", None, "The .npz array file to write.")
_TRAIN = flags.DEFINE_integer("train", 0, "Keep a class-balanced prefix of this many training images (0 = all).")
_TEST = flags.DEFINE_integer("test", 0, "Likewise for the test images.")
flags.mark_flags_as_required(["from", "out"])


def main(argv):
  cli.setup_logging()
  from mixlin_jax import archives  # pylint: disable=import-outside-toplevel
  with cli.user_errors_reported():
    if len(argv) != 2 or argv[1] not in archives.FORMATS:
      raise cli.UsageError(
          f"name one dataset, {' | '.join(archives.FORMATS)}, before the "
          f"flags (got {' '.join(argv[1:]) or 'none'})")
    info = archives.make_array_file(argv[1], _FROM.value, _OUT.value,
                                    num_train=_TRAIN.value,
                                    num_test=_TEST.value)
  print(f"Wrote {info['path']}: {info['num_train']} training and "
        f"{info['num_test']} test images, {info['num_classes']} classes. "
        f"Use --config.data.source={info['path']}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser())
