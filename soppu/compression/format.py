"""The compressed format on disk: shared bases and per-adapter cores as safetensors, plus a JSON manifest.

Both kinds of safetensors file carry string metadata (``__metadata__``) saying what they are. Common fields:
``format`` = ``"soppu-jd"``; ``format_version`` = ``"1"`` (a reader refuses any other value); ``kind``;
``mode`` (``"full"`` / ``"diag"``); ``base_model`` (``""`` when unknown); ``target_modules`` (JSON: a list of
names or a pattern string); ``basis_id``; and ``modules`` (JSON, per module, below).

- **Bases file**, ``kind="bases"``, one per cluster (``bases-<k>.safetensors`` in a compression directory,
  ``bases.safetensors`` in the store): tensors ``<module>.U`` (d_out x R) and ``<module>.V`` (d_in x R), with
  orthonormal columns; ``modules`` = ``{module: {"rank": R, "d_out": d_out, "d_in": d_in}}``; ``basis_id`` is
  the SHA-256 (hex) of the tensors as stored (:func:`compute_basis_id`), so a core names the basis it belongs
  to and a changed basis can never be paired with an old core.
- **Core file**, ``kind="core"``, one per adapter, a few KB: tensors ``<module>.S``, R x R (full) or the
  length-R diagonal (diag); ``name`` (the adapter's); ``basis_id`` (its bases'); ``modules`` =
  ``{module: {"rank": R, "scaling": 1.0, "source_rank": r, "source_scaling": s, "error": e}}``. ``scaling`` is
  what serving applies to ``U S V^T``: always 1, since the LoRA scaling ``s`` is folded into ``S``;
  ``source_rank``/``source_scaling`` describe the original LoRA, ``error`` is its relative Frobenius error
  (``null`` when unknown). Optional ``bases``: where the bases file lies, as a ``/``-separated path relative
  to the core file's folder (``../bases-000.safetensors`` in a compression directory); a server given only a
  core's location finds the bases through it, and the ``basis_id`` still decides whether they pair.

**Compression directory** (:func:`write_compression`)::

    DIR/bases-000.safetensors       cluster 0's bases (index zero padded to 3 digits)
    DIR/cores/<name>.safetensors    one core per adapter (names follow soppu.store.layout.check_name)
    DIR/compression.json            the manifest: the common fields, dtype, clusters, adapter -> cluster/files

Tensors are float32 unless a storage ``dtype`` (float16, bfloat16) is asked for; readers return float32, since
every computation on them runs in float32. Writing is deterministic: identical input gives byte-identical files
(sorted JSON keys, no timestamps). Reading validates everything: format, version and kind (else
``bad_compressed_format``), tensor names and shapes against the metadata, finite values, the bases' content
against their ``basis_id`` (a mismatch is a corrupt file: ``bad_compressed_format``), and a core's ``basis_id``,
ranks and mode against its bases (``basis_mismatch``).

The code: :mod:`soppu.compression.artifacts` (the names, the tuples a reader returns, the ``basis_id`` hash),
:mod:`soppu.compression.writer` (bytes and directories out) and :mod:`soppu.compression.reader` (bytes and
directories in, validated). This module is their public surface; import from here.
"""

from soppu.compression.artifacts import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORAGE_DTYPES,
    ArtifactMeta,
    BasesFile,
    CoreFile,
    bases_file_name,
    core_file_name,
)
from soppu.compression.reader import read_bases, read_compression, read_core
from soppu.compression.writer import bases_bytes, compute_basis_id, core_bytes, write_compression

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "STORAGE_DTYPES",
    "ArtifactMeta",
    "BasesFile",
    "CoreFile",
    "bases_bytes",
    "bases_file_name",
    "compute_basis_id",
    "core_bytes",
    "core_file_name",
    "read_bases",
    "read_compression",
    "read_core",
    "write_compression",
]
