"""One base class, so the CLI can turn every expected failure into one clear line."""


class KaizenError(Exception):
    """An expected failure whose message is meant for the user as it is."""


class StorageError(KaizenError, OSError):
    """A write that failed (a full disk, a read-only volume): one line naming the file. Still
    an OSError (with its errno), so callers that handle I/O errors keep working."""

    def __init__(self, path: object, cause: OSError):
        super().__init__(cause.errno, f"{path}: cannot write: {cause.strerror or cause}; nothing was changed")
        self.filename = str(path)

    def __str__(self) -> str:
        return str(self.strerror)
