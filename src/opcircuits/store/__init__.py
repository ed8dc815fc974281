"""The thought store: a directory of continuous thoughts that extraction writes and analysis reads.

Layout (format_version 1)::

    STORE/
      manifest.json              what produced the data (model, layers, positions, dataset, …)
      records.parquet            one row per problem, in dataset order
      hidden-00000.safetensors   `hidden` [n, P, L, D] and `latent_inputs` [n, K, D] of shard 0
      hidden-00001.safetensors   ...
      parts/records-00000.parquet  (only while writing: shard 0's records, merged at finalize)

Shard i holds problems [i*shard_size, (i+1)*shard_size). A shard is written as its records part
first, then its hidden file (atomic rename, the commit point), whose safetensors metadata holds the
sha256 of the records part — so a shard counts as done only when both files exist and belong
together. `finalize` merges the parts into records.parquet and sets `complete` in the manifest.

Modules: `schema` (file names, the records' schema, value checks), `reader` (`open_store`,
`Store`, `describe`), `writer` (`StoreWriter`, `write_store`, `remove_store`), `legacy` (import of
the earlier scripts' JSON; not imported here). Pure numpy/pyarrow: this package must not import
torch (analysis reads stores without it).
"""

from opcircuits.store.reader import Store, describe, open_store
from opcircuits.store.schema import (
    DEFAULT_SHARD_SIZE,
    FORMAT_VERSION,
    INCOMPLETE_HINT,
    MANIFEST,
    MATCH_FIELDS,
    PARTS,
    RECORD_COLUMNS,
    RECORD_SCHEMA,
    RECORDS,
    REQUIRED_COLUMNS,
    STORE_DTYPES,
    default_positions,
    part_name,
    records_table,
    shard_name,
)
from opcircuits.store.writer import (
    StoreWriter,
    build_manifest,
    manifest_differences,
    remove_store,
    write_store,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT_VERSION",
    "INCOMPLETE_HINT",
    "MANIFEST",
    "MATCH_FIELDS",
    "PARTS",
    "RECORDS",
    "RECORD_COLUMNS",
    "RECORD_SCHEMA",
    "REQUIRED_COLUMNS",
    "STORE_DTYPES",
    "Store",
    "StoreWriter",
    "build_manifest",
    "default_positions",
    "describe",
    "manifest_differences",
    "open_store",
    "part_name",
    "records_table",
    "remove_store",
    "shard_name",
    "write_store",
]
