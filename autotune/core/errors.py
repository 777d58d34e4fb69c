"""Domain errors: each carries one line for the user; the CLI prints it and exits 1."""


class AutotuneError(Exception):
    """Something the user asked for cannot be done (bad input, wrong GPU, missing file)."""
