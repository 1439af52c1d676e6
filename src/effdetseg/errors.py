"""The one exception type the command line turns into a single clear error line."""
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
