"""The one exception type for bad user input: the CLI prints its message and exits 2."""


class UserError(Exception):
    """Bad input (config, file, value). The message names what is wrong and what would be right."""
