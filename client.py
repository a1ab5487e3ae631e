"""Vitrine shell entry point: flags, connect, run the shell. Never imports TensorFlow."""

from shell.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
