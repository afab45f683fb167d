"""Protocol code on the edge: bundles from the object store, unpacked once per commit."""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from nats.js.object_store import ObjectStore

from praxis_contracts.errors import ProtocolLoadFailed
from praxis_contracts.protocols import ProtocolDefinition


class CodeCache:
    """Protocol code unpacked once per commit under ``cache_dir``; never imported here (the
    runners import it, in their sandbox)."""

    def __init__(self, store: Callable[[], ObjectStore], cache_dir: Path) -> None:
        self._store = store
        self.cache_dir = cache_dir
        self._ready: set[str] = set()
        self._lock = asyncio.Lock()

    async def folder(self, definition: ProtocolDefinition) -> tuple[Path, str]:
        """The folder holding the definition's commit, unpacked, and the identity its modules
        are imported under (one package per source and commit)."""
        key = f"{definition.source_id}@{definition.commit}"
        target = self.cache_dir / str(definition.source_id) / definition.commit
        if key not in self._ready:
            async with self._lock:
                if not target.exists():
                    await self._unpack(definition.code_bundle, target)
                self._ready.add(key)
        return target, key

    async def _unpack(self, bundle: str, target: Path) -> None:
        try:
            result = await self._store().get(bundle)
        except Exception as exc:
            raise ProtocolLoadFailed(f"code bundle {bundle} is not available: {exc}") from exc
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(result.data or b"")) as tar:
            tar.extractall(staging, filter="data")
        staging.rename(target)
