"""Shared command-line plumbing: clean help, one-line errors, distribution flags.

Scripts run as files, so this module is importable as `_cli` beside them. It
imports no TensorFlow: scripts import the library inside `main`, so `--help`
answers at once.

  * `run(main)`: `absl.app.run(main)`; `--help` prints the script's docstring and
    its flags and exits 0; bad flags and expected errors print `error: <message>`
    and exit 2. Before `main`, `--seed` seeds Python, NumPy and TensorFlow and
    turns on TensorFlow's op determinism (`models.training.set_seed`), so a
    command's result never depends on which of its stages happened to seed first.
  * `define_strategy_flags()` / `strategy_scope()`: `--strategy=default|mirrored|
    multi_worker` and `--cpu_replicas=N` (`models.distribute`).
"""
import contextlib
import glob
import os
import sys

from absl import app, flags, logging

# TensorFlow's C++ INFO/WARNING lines; without an NVIDIA driver also its ERROR line
# "failed call to cuInit" (there is no GPU to talk to). Python errors still raise.
_NO_GPU_DRIVER = not (os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia*"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if _NO_GPU_DRIVER else "2")

EXPECTED = (ValueError, OSError, RuntimeError, KeyError)
HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _help() -> str:
    main = sys.modules["__main__"]
    doc = (main.__doc__ or "").strip()
    module = flags.FLAGS.find_module_defining_flag("seed") or sys.argv[0]
    text = flags.FLAGS.module_help(module) if module else ""
    if flags.FLAGS.get_flags_for_module(__name__):        # --strategy, --cpu_replicas
        text += "\n" + flags.FLAGS.module_help(__name__)
    return f"{doc}\n\nFlags:\n{text}" if text else doc


def run(main):
    """`absl.app.run(main)` with a clean `--help` (exit 0) and one-line errors (exit 2)."""
    if any(arg in HELP for arg in sys.argv[1:]):
        print(_help())
        sys.exit(0)

    def guarded(argv):
        if "--verbosity" not in " ".join(sys.argv) and "-v" not in sys.argv:
            logging.set_verbosity(logging.WARNING)    # TensorFlow's SavedModel INFO lines
        try:
            if "seed" in flags.FLAGS:
                from models import training      # TensorFlow: after --help, not before
                training.set_seed(flags.FLAGS.seed)
            return main(argv)
        except EXPECTED as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:          # unknown flag (with "Did you mean"), bad value
            print("error: " + "; ".join(str(err).splitlines()), file=sys.stderr)
            sys.exit(2)

    app.run(guarded, flags_parser=parse)


def define_strategy_flags() -> None:
    """Defines --strategy and --cpu_replicas (call once, at module level)."""
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                      "tf.distribute strategy: default (one device), mirrored (every local "
                      "GPU, else the --cpu_replicas logical CPUs), multi_worker (workers "
                      "from the TF_CONFIG environment variable).")
    flags.DEFINE_integer("cpu_replicas", None, "Split this machine's CPU into N logical "
                         "devices (so mirrored runs without GPUs).")


@contextlib.contextmanager
def strategy_scope():
    """The scope of the strategy named by --strategy (with --cpu_replicas applied)."""
    from models import distribute
    strategy = distribute.make_strategy(flags.FLAGS.strategy,
                                        cpu_replicas=flags.FLAGS.cpu_replicas)
    with strategy.scope():
        yield strategy
