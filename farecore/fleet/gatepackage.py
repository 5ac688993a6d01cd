"""A gate (or the gates of one station controller) on a parameter package.

At start, :class:`GatePackage` finds what the gate starts on: the package it last put in
force (kept in its cache, verified again in a chain from the configured keyring, its
files checked again), or, before its first
package, one fetched now from the source, or else the configuration's own files. The
gate is then built on those files (``for_config``), and :meth:`GatePackage.follow`
keeps it on the newest package: each one is verified, and then put in force for every
gate at once, between two taps (``apply_to``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from farecore.card.keys import Keyring
from farecore.errors import ConfigError, FarecoreError
from farecore.fleet.follow import (
    PackageCache,
    PackageFollower,
    Prepared,
    SourceUnavailable,
    open_source,
    prepare,
)
from farecore.fleet.package import PackageRefused, SignedPackage
from farecore.gate.config import GateConfig
from farecore.gate.wiring import WiredGate

__all__ = ["GatePackage", "apply_to"]

_log = logging.getLogger(__name__)


def apply_to(
    gates: Sequence[WiredGate], prepared: Prepared, *, shared_cache: bool, starting: bool = False
) -> None:
    """Put ``prepared`` in force for ``gates``; raise to refuse it, changing nothing.

    Issued lists older than one a gate already used are a rollback: the package is
    refused. The revocation table and delta are verified by each gate's table store
    and go in force first (a failure there refuses the package); then the keyring and
    issued lists, with a fresh credential cache (one for all, when the gates share
    one). ``starting``: the package a gate starts on may be older than the table its
    marks hold (it stopped between putting a newer package's table in force and
    keeping that package); the newer table then stays, and the follower fetches that
    package again."""
    for wired in gates:
        for listed in prepared.issued:
            seen = wired.marks.issued.get(listed.key_id)
            digest = listed.header.body_sha256.hex()
            if seen is not None and (
                listed.generation < seen[0] or (listed.generation == seen[0] and digest != seen[1])
            ):
                raise PackageRefused(
                    f"issued list for issuer key {listed.key_id}: generation "
                    f"{listed.generation} is a rollback (this gate used generation {seen[0]})"
                )
    generation = prepared.package.manifest.revocation_generation
    for wired in gates:
        if wired.revocation is None:
            continue
        if starting and wired.revocation.generation > generation:
            _log.info(
                "revocation generation %d stays in force (package version %d has %d)",
                wired.revocation.generation,
                prepared.version,
                generation,
            )
            continue
        wired.revocation.offer(prepared.revocation_base, prepared.revocation_delta)
    cache: dict[bytes, object] | None = {} if shared_cache else None
    for wired in gates:
        for listed in prepared.issued:
            wired.marks.issued[listed.key_id] = (listed.generation, listed.header.body_sha256.hex())
        wired.marks.save()
        wired.gate.validator.set_trust(prepared.keyring, prepared.issued, cache)


class GatePackage:
    """The package side of one gate process: its source, cache and follower."""

    def __init__(self, cfg: GateConfig) -> None:
        if cfg.package_source is None:
            raise ConfigError("the configuration has no [package] section")
        self.cfg = cfg
        self.source = open_source(
            cfg.package_source, ca_file=cfg.package_ca_file, timeout_s=cfg.package_timeout_s
        )
        self.cache = PackageCache(cfg.package_dir, owner=str(cfg.terminal_id))
        self.boot_keyring = Keyring.load(cfg.keyring)
        self._first: Prepared | None = None
        self.start: Prepared | None = self._starting_package()
        self.follower: PackageFollower | None = None

    def _starting_package(self) -> Prepared | None:
        found = self.cache.adopted(self.boot_keyring)
        adopted = found[0] if found is not None else None
        held = self._reopen(adopted) if adopted is not None else None
        # A gate asks the source once as it starts, so that it starts on the newest
        # package when it can (bounded by the source's timeout; unreachable: it starts
        # on the one it holds).
        follower = PackageFollower(
            self.source,
            self.cache,
            held.keyring if held is not None else self.boot_keyring,
            self._adopt_first,
            in_force=adopted,
            poll_s=0,
        )
        follower.poll()
        return self._first or held

    def _adopt_first(self, prepared: Prepared) -> None:
        self._first = prepared

    def _reopen(self, adopted: SignedPackage) -> Prepared:
        """The package in force (verified in a chain from the configured keyring by
        ``PackageCache.adopted``), its files checked again (fetched again if the cache
        lost them)."""
        try:
            return prepare(self.cache, self.source, adopted)
        except SourceUnavailable as exc:
            raise ConfigError(
                f"{self.cache.dir}: files of package version {adopted.manifest.version} are "
                f"missing from the cache, and the source is unreachable ({exc})"
            ) from None
        except (FarecoreError, OSError) as exc:
            raise ConfigError(f"{self.cache.dir}: the package in force: {exc}") from None

    def for_config(self) -> GateConfig:
        """The gate's configuration with the package's keyring, lists and table."""
        p = self.start
        if p is None:
            if self.cfg.revocation_table is None:
                raise ConfigError(
                    f"no package has been put in force yet and the source {self.source.label} "
                    "gave none; the gate has no revocation table to start on (set "
                    "[revocation] table to start on a local one meanwhile)"
                )
            _log.warning(
                "no package in force yet; starting on the configured files and following %s",
                self.source.label,
            )
            return self.cfg
        files = {f.sha256: self.cache.path(f) for f in p.package.manifest.files}
        keyring_entry = p.package.manifest.one("keyring")
        assert keyring_entry is not None
        return dataclasses.replace(
            self.cfg,
            keyring=files[keyring_entry.sha256],
            issued_lists=tuple(files[f.sha256] for f in p.package.manifest.of("issued")),
            revocation_table=p.revocation_base,
        )

    def follow(
        self, gates: Sequence[WiredGate], *, shared_cache: bool = False, start: bool = True
    ) -> PackageFollower:
        """Put the starting package's delta in force, mark it adopted, and follow the
        source for ``gates`` (``start`` False: no thread; call the follower's ``poll``)."""
        p = self.start
        if p is not None:
            apply_to(gates, p, shared_cache=shared_cache, starting=True)
            self.cache.adopt(p.package)
        follower = PackageFollower(
            self.source,
            self.cache,
            p.keyring if p is not None else self.boot_keyring,
            lambda prepared: apply_to(gates, prepared, shared_cache=shared_cache),
            in_force=p.package if p is not None else None,
            poll_s=self.cfg.package_poll_s,
        )
        if p is not None:
            _log.info(
                "package version %d in force (revocation generation %d); following %s",
                p.version,
                p.package.manifest.revocation_generation,
                self.source.label,
            )
        self.follower = follower
        if start:
            follower.start()
        return follower
