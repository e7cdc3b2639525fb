"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class MedvtabError(Exception):
    """A problem with the user's input (a file, a field, an option), stated in one line."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of another library's error message, for a one-line error of ours: cut at a word boundary
    (never mid-word, marked with "...") and never blank (the exception's type instead)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "") or type(err).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " ..."
