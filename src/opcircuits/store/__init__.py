"""The thought store: a directory of continuous thoughts that extraction writes and analysis reads.

Layout (format_version 2)::

    STORE/
      manifest.json              what produced the data (model, layers, positions, dataset, …),
                                 and once complete the sha256 of every shard and of the records
      records.parquet            one row per problem, in dataset order
      hidden-00000.safetensors   `hidden` [n, P, L, D] and `latent_inputs` [n, K, D] of shard 0;
                                 its metadata: run identity, layers, positions, ids (`integrity`)
      hidden-00001.safetensors   ...
      parts/records-00000.parquet, parts/hidden-00000.sha256
                                 (only while writing: shard 0's records and its file's sha256)

Shard i holds problems [i*shard_size, (i+1)*shard_size). A shard is written as its records part,
its hash file, then its hidden file (atomic rename, the commit point), whose metadata holds the
sha256 of the records part — so a shard counts as done only when all three exist and belong
together. `finalize` merges the parts into records.parquet, moves the hashes into the manifest and
sets `complete`.

Modules: `schema` (file names, the records' schema, value checks), `manifest` (building, comparing
and creating it), `integrity` (what shards record about themselves and how that is checked),
`reader` (`open_store`, `Store`, `verify_store`, `describe`), `writer` (`StoreWriter`,
`write_store`, `remove_store`), `legacy` (import of the earlier scripts' JSON; not imported here).
Pure numpy/pyarrow: this package must not import torch (analysis reads stores without it).
"""

from opcircuits.store.integrity import run_identity, store_fingerprint
from opcircuits.store.manifest import build_manifest, manifest_differences
from opcircuits.store.reader import Store, describe, open_store, verify_store
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
    is_store_file,
    part_name,
    records_table,
    shard_name,
)
from opcircuits.store.writer import StoreWriter, remove_store, write_store

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
    "is_store_file",
    "manifest_differences",
    "open_store",
    "part_name",
    "records_table",
    "remove_store",
    "run_identity",
    "shard_name",
    "store_fingerprint",
    "verify_store",
    "write_store",
]
