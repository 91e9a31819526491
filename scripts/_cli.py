"""Shared command-line plumbing: expected errors become one clear line, not a traceback.

Scripts run as files, so this module is importable as `_cli` beside them.
"""
import sys

from absl import app

EXPECTED = (ValueError, OSError, RuntimeError, KeyError)


def run(main):
    """`absl.app.run(main)`, printing `error: <message>` and exiting 2 on bad input."""
    def guarded(argv):
        try:
            return main(argv)
        except EXPECTED as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
