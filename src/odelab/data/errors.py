"""The one error the data layer raises for bad data on disk."""


class DatasetError(RuntimeError):
    """A dataset file is missing, unreadable, or fails its checksum under ``verify="strict"``.

    The message always names the file, its official md5 and how to get a good copy.
    """
