"""The one exception type the command line turns into a single clear error line."""


class EffdetsegError(Exception):
    """Bad input from the user (file, key, value): the message names it and says what is wrong."""
