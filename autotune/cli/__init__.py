"""The `autotune` command line (typer); ``main`` is the console script. Importing this imports neither torch nor the
kernels: each command imports what it needs when it runs."""


def main(argv: list[str] | None = None) -> None:
    """The console script: one line (and how to install them) when the tuning dependencies are missing."""
    try:
        from .app import main as run
    except ModuleNotFoundError as exc:
        if exc.name not in ("typer", "rich", "click", "optuna"):
            raise
        import sys

        sys.stderr.write(f"error: the autotune command needs the tuning extras ({exc.name} is missing): "
                         "pip install 'flashcore-autotune[tune]'\n")
        sys.exit(1)
    run(argv)
