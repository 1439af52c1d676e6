"""The one exception type the command line turns into a single clear error line, and the one way
another exception becomes part of such a line (``first_line``)."""
from __future__ import annotations


class EffdetsegError(Exception):
    """Bad input from the user (file, key, value): the message names it and says what is wrong.

    A DataLoader worker's exception reaches the main process rebuilt by torch as
    ``type(message)``, where ``message`` is "Caught … in DataLoader worker process N. Original
    Traceback …" and the worker's whole traceback; this constructor keeps only the original
    message, so an error met while loading data is still the one line that names the file.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(self._original_message(str(message)))

    @classmethod
    def _original_message(cls, text: str) -> str:
        if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
            return text
        header = f"\n{cls.__module__}.{cls.__qualname__}: "
        start = text.rfind(header)
        return text[start + len(header):].strip() if start >= 0 else text


def first_line(error: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``error``'s message, for an error line that names what went wrong below
    it (parsers, constructors and libraries write tracebacks or multi-line reports); the type's
    name when the message is empty. ``with_type``: ``"TypeName: first line"``, where the message
    alone would not say what failed (a network or download error)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    return f"{type(error).__name__}: {line}" if with_type else line
