"""Registry CSV files: which files are in progress, failed, processed or uploaded.

The tables are OpenMSIStream's, byte for byte, so that either program can read what
the other wrote (see ``docs/compatibility.md``, "Registry files"). One job a module:

* :mod:`.cells` -- a value as the ``repr()`` text of its cell, and back;
* :mod:`.table` -- the table format, atomic writes, removal of torn writes, lazy
  writes, merging files and the flush timer (:class:`DataclassTable`);
* :mod:`.names` -- the file names of the registries and the journal, and which
  topic/group pairs a name of OpenMSIStream's can belong to;
* :mod:`.base` -- what both registries do alike: open, flush on a timer, close;
* :mod:`.stream` -- :class:`StreamRegistry`, the processor's;
* :mod:`.producer` -- :class:`ProducerRegistry`, the upload-directory producer's.

Tables are not rewritten on every change: a changed table reaches its file within
``flush_interval`` (5 s). What a crash loses of the consumer's tables is restored from
its transfer journal (see :class:`StreamRegistry`); its failure rows, and most changes
of the producer's tables, are written at once. No file of another topic or consumer
group is ever read, merged or deleted as ours (see :mod:`.names`).
"""

from .base import DEFAULT_FLUSH_INTERVAL
from .cells import format_timestamp, parse_timestamp
from .names import (
    PRIVATE_PREFIX,
    NameReading,
    ProducerRegistryPaths,
    StreamRegistryPaths,
    journal_name,
    journal_path,
    name_readings,
    private_name_token,
)
from .producer import ProducerRegistry, UploadedRow, UploadInProgressRow
from .stream import (
    ABANDONED,
    FAILED,
    IN_PROGRESS,
    MAX_ROWS_PER_FILE,
    MISMATCHED_HASH,
    WAITING,
    InProgressRow,
    ProcessedRow,
    StreamRegistry,
)
from .table import DataclassTable, RegistryError, parse_table, read_table, render_table

__all__ = [
    "ABANDONED",
    "DEFAULT_FLUSH_INTERVAL",
    "FAILED",
    "IN_PROGRESS",
    "MAX_ROWS_PER_FILE",
    "MISMATCHED_HASH",
    "PRIVATE_PREFIX",
    "WAITING",
    "DataclassTable",
    "InProgressRow",
    "NameReading",
    "ProcessedRow",
    "ProducerRegistry",
    "ProducerRegistryPaths",
    "RegistryError",
    "StreamRegistry",
    "StreamRegistryPaths",
    "UploadInProgressRow",
    "UploadedRow",
    "format_timestamp",
    "journal_name",
    "journal_path",
    "name_readings",
    "parse_table",
    "parse_timestamp",
    "private_name_token",
    "read_table",
    "render_table",
]
