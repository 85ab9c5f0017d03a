"""One error type for everything a user can fix: it says what went wrong and what to do."""


class RlaifError(Exception):
    """A problem in the user's config, data or environment, with the fix spelled out."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
