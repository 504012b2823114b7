"""Every checkpoint released for InternImage and FlashInternImage: one table, by name.

``list_pretrained`` filters the table, ``find_release`` looks a name up (the file name as
released works too), ``verify_checkpoint`` says whether a file will load before it is read.
Importing this package needs only the core dependencies.
"""

from internimage.catalog.builders import BUILDERS, BuiltModel, build_release, load_release_weights
from internimage.catalog.table import (
    FAMILIES,
    METHODS,
    RELEASES,
    TASKS,
    Release,
    find_release,
    list_pretrained,
    markdown_tables,
)
from internimage.catalog.verify import checkpoint_shapes, verify_checkpoint

__all__ = [
    "BUILDERS",
    "FAMILIES",
    "METHODS",
    "RELEASES",
    "TASKS",
    "BuiltModel",
    "Release",
    "build_release",
    "checkpoint_shapes",
    "find_release",
    "list_pretrained",
    "load_release_weights",
    "markdown_tables",
    "verify_checkpoint",
]
