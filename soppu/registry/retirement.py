"""Retiring a cohort's replaced basis: once a refit has published every member on a new basis, the old basis and
every core and export built on it are deleted, so the data of whoever fitted it (maybe a deleted user) survives
in no served object. A member's current version that still uses it (a newer upload overtook the refit) keeps it,
listed in the cohort's ``stale_bases``, until :func:`sweep_stale` finds it unused. Manifests and originals stay,
as the history."""

from __future__ import annotations

from collections.abc import Sequence

from soppu.errors import ObjectNotFound
from soppu.registry.records import CohortState, Manifest, Pointer, split_member
from soppu.store.base import ObjectStore
from soppu.store.layout import AdapterVersion, manifests_prefix, pointer_key

__all__ = ["current_basis", "current_manifest", "retire_basis", "sweep_stale"]


def current_manifest(store: ObjectStore, key: str) -> Manifest | None:
    """The manifest of the member's current version, if it has one."""
    user, adapter = split_member(key)
    try:
        pointer = Pointer.from_json(store.get(pointer_key(user, adapter)).data)
        return Manifest.from_json(store.get(pointer.manifest_key).data)
    except ObjectNotFound:
        return None


def current_basis(store: ObjectStore, key: str) -> str | None:
    """The basis the member's current version is served from, if any."""
    current = current_manifest(store, key)
    return None if current is None else current.basis_key


def sweep_stale(store: ObjectStore, state: CohortState, gone: frozenset[str] = frozenset()) -> list[str]:
    """Retire every replaced basis that no current version uses any more (``gone``: members being deleted,
    whose versions go with them). The bases deleted."""
    deleted = []
    for basis, holders in list(state.stale_bases.items()):
        still = [k for k in holders if k not in gone and current_basis(store, k) == basis]
        if still:
            state.stale_bases[basis] = still
            continue
        del state.stale_bases[basis]
        if retire_basis(store, basis, state, others=holders):
            deleted.append(basis)
    return deleted


def retire_basis(
    store: ObjectStore, old_basis: str, state: CohortState, holders: Sequence[str] = (), others: Sequence[str] = ()
) -> bool:
    """Delete a replaced basis and every core and export built on it, of the members and ``others``. The current
    version of a member in ``holders`` (overtaken during the refit) may still use it: then the basis and that
    version stay, listed in ``stale_bases``. Whether the basis was deleted."""
    keeping = []
    for key in {*state.members, *holders, *others}:
        user, adapter = split_member(key)
        prefix = manifests_prefix(user, adapter)
        current = current_manifest(store, key)
        if key in holders and current is not None and current.basis_key == old_basis:
            keeping.append(key)
        for info in list(store.list(prefix)):
            manifest = Manifest.from_json(store.get(info.key).data)
            if manifest.basis_key == old_basis and (current is None or manifest.version != current.version):
                version = AdapterVersion(user, adapter, manifest.version)
                for stale in (version.core_key, *version.export_keys()):
                    store.delete(stale)
    if keeping:
        state.stale_bases[old_basis] = sorted(keeping)
        return False
    store.delete(old_basis)
    return True
