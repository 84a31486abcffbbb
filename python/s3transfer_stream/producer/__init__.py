"""The producer side: files cut into OpenMSIStream chunk messages and sent to Kafka.

* :func:`send_file` sends one file (all of its chunks, or a subset when resuming),
  with OpenMSIStream's message keys and values, every chunk of the file to the same
  partition ("file-affine partitioning", :func:`~s3transfer_stream.kafka.file_partition`).
  It is all of ``UploadDataFile``.
* :class:`DirectoryUploader` is the engine of ``DataFileUploadDirectory``: it watches a
  directory tree, sends files once they have been quiet for ``watchdog_lag_time``
  seconds, keeps OpenMSIStream's upload registry in ``<upload_dir>/LOGS/`` (updated
  only after the broker acknowledged a chunk) and resumes partly sent files after a
  restart by sending only the chunks not yet acknowledged.
* :func:`open_encryptor` gives both producers the :class:`Encryptor` of a config's
  ``[kafkacrypto]`` node: every message's key and value encrypted (KafkaCrypto), the
  node kept serving keys a little after the final flush.

One job a module:

* :mod:`.paths` -- which files of a directory are sent, and their names on the wire;
* :mod:`.send` -- :func:`send_file`: one file's chunks produced and acknowledged;
* :mod:`.versions` -- the version log: what each file looked like when it was sent;
* :mod:`.state` -- this run's one record of every file's upload state, and the counts;
* :mod:`.watcher` -- finding files, deciding when one is ready and whether it changed;
* :mod:`.sender` -- hashing, producing and resuming one file, resending a chunk;
* :mod:`.encryption` -- the KafkaCrypto node a producing process encrypts with;
* :mod:`.directory` -- :class:`DirectoryUploader`: the two above and their threads.
"""

from .directory import DirectoryUploader
from .encryption import Encryptor, open_encryptor
from .paths import LOGS_SUBDIR, is_eligible, relative_location
from .send import DEFAULT_BATCH_SIZE, DEFAULT_STALL_TIMEOUT, FileSendResult, send_file
from .send import runs as _runs
from .sender import MAX_DELIVERY_ATTEMPTS
from .state import UploaderStatus
from .versions import FileVersion as _Version
from .versions import VersionLog as _VersionLog

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_STALL_TIMEOUT",
    "LOGS_SUBDIR",
    "MAX_DELIVERY_ATTEMPTS",
    "DirectoryUploader",
    "Encryptor",
    "FileSendResult",
    "UploaderStatus",
    "_Version",
    "_VersionLog",
    "_runs",
    "is_eligible",
    "open_encryptor",
    "relative_location",
    "send_file",
]
