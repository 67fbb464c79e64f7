"""``python -m nntrtool`` runs the command-line tool."""

from nntrtool.cli.app import main

if __name__ == "__main__":
    main()
