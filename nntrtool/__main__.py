"""``python -m nntrtool`` runs the command-line tool."""

import sys

from nntrtool.outputs import INTERRUPTED_LINE, exit_status, install_signal_handlers


def run() -> None:
    """The entry point. Signal handlers come first, before the heavier imports, so a signal
    while the tool starts up also ends it with one line and exit 128 + signal."""
    install_signal_handlers()
    try:
        from nntrtool.cli.app import main
    except KeyboardInterrupt as err:
        print(INTERRUPTED_LINE, file=sys.stderr)
        sys.exit(exit_status(err))
    main()


if __name__ == "__main__":
    run()
