"""The one exception type users see: what was wrong, and what to do about it."""


class HeadpruneError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    ``message`` names the input that was wrong; ``fix`` says what to do instead.
    """

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message
