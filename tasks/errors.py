"""One base class, so the CLI can turn every expected failure into one clear line."""


class KaizenError(Exception):
    """An expected failure whose message is meant for the user as it is."""
