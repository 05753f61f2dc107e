"""Errors shown to the user as one clear line (the CLI prints them without a traceback)."""

class QihuangError(Exception):
    """Base class of user-facing errors: the CLI prints the message, not a traceback."""


class InputError(QihuangError):
    """Bad input: the message names the file, line or field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            message = f"field {field!r}: {message}"
        super().__init__(where + message)
        self.path, self.line, self.field = path, line, field


class ConfigError(QihuangError):
    """An invalid configuration value; the message names the field."""
