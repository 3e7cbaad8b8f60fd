"""Named errors: each says what went wrong and what to do next."""


class KlptraceError(Exception):
    """An error a user can act on; the CLI prints it without a traceback."""

    #: exit status the CLI uses for this error
    status = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class NotSupported(KlptraceError):
    """This machine cannot run what was asked (no root, no livepatch, ...): a skip."""

    status = 4


class UsageError(KlptraceError):
    """The command line asks for something that does not exist (exit 2, like argparse)."""

    status = 2
