"""The exception types of runner-fs: one hierarchy, named after the reference's."""


class RunnerFsError(Exception):
    """Base of every error runner-fs raises on purpose."""


class MetricsStorageError(RunnerFsError):
    """A per-runner filesystem operation failed."""


class CreateMetricsStorageError(MetricsStorageError):
    """A filesystem could not be created; nothing of it was left behind."""


class GetMetricsStorageError(MetricsStorageError):
    """A filesystem does not exist or could not be mounted."""


class DeleteMetricsStorageError(MetricsStorageError):
    """A filesystem could not be removed."""


class QuarantineMetricsStorageError(MetricsStorageError):
    """A filesystem could not be archived and removed."""


class LockTimeoutError(RunnerFsError):
    """A lock was not acquired within its bounded wait."""


class CorruptMetricDataError(RunnerFsError):
    """A runner's metric file breaks a rule; its filesystem is to be quarantined."""


class StorageError(RunnerFsError):
    """The metrics storage backend failed or was given something it cannot store."""


class StorageDataError(StorageError):
    """The storage refused a value (out of range, not storable): the data's fault, not its."""
