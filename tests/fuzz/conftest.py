"""Counts of fuzz inputs tried, printed at the end of the test session."""
from collections import Counter

TRIED: Counter = Counter()


def pytest_terminal_summary(terminalreporter):
    if TRIED:
        terminalreporter.write_sep("-", "fuzz inputs tried")
        for target, n in sorted(TRIED.items()):
            terminalreporter.write_line(f"{target}: {n}")
        terminalreporter.write_line(f"total: {sum(TRIED.values())}")
