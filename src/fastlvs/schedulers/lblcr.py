"""lblcr: locality-based least-connection with replication (ip_vs_lblcr.c). Each destination
address maps to a SET of servers: a flow goes to the set's least-loaded member unless that
one is overloaded (half-load rule), in which case wlc picks a server for it and that server
joins the set. A set unchanged for lblcr_expiration loses its most loaded member. The cache
table and its collector are lblc's (ExpiringTable).
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler
from fastlvs.schedulers.lblc import (DEFAULT_EXPIRATION, ExpiringTable, bucket_of, is_overloaded,
                                     same_dest)
from fastlvs.schedulers.wlc import weighted_least

# Slots of a table entry: [members, last use, bucket, last set change]. `members` is the set
# in the kernel's order: a server joins at the head.
_MEMBERS, _LASTUSE, _BUCKET, _LASTMOD = range(4)


def set_least(members, live) -> RealServer | None:
    """ip_vs_dest_set_min: the first member, in set order, with the least
    (activeconns * 256 + inactconns) / weight among members that are still in the service's
    list (`live`), have weight > 0 and are not overloaded; None if no member qualifies."""
    least = None
    loh = 1
    lw = 0  # infinitely loaded start, as in wlc.weighted_least
    for d in members:
        if loh * d.weight > (doh := d.activeconns * 256 + d.inactconns) * lw \
                and not d.overloaded and d in live:
            least = d
            loh = doh
            lw = d.weight
    return least


def set_most(members) -> RealServer | None:
    """ip_vs_dest_set_max: the first member, in set order, with the greatest
    (activeconns * 256 + inactconns) / weight among members with weight > 0, whether or not
    they are still in the list or overloaded; None if every member has weight 0."""
    most = None
    for d in members:
        if d.weight > 0:
            if most is None or moh * d.weight < (doh := d.activeconns * 256 + d.inactconns) * mw:
                most = d
                moh = d.activeconns * 256 + d.inactconns
                mw = d.weight
    return most


class LocalityBasedLeastConnectionReplication(Scheduler):
    """Locality-based least-connection with replication: an address owns a server set.

    `expiration` (seconds, default 24 h) is the lblcr_expiration sysctl. It is both how
    long an unused entry survives (dropped by the next full check, every 30 minutes) and
    how long a set of two or more must go unchanged before it sheds its most loaded member.
    Set it on the instance.
    """

    name = "lblcr"
    valid_flags: frozenset[str] = frozenset()
    expiration = DEFAULT_EXPIRATION

    def init_service(self) -> None:
        """Start with an empty cache; the collector's first run is due 60 s from now."""
        self._table = ExpiringTable(self.clock(), self.expiration)
        self._live = set(self.servers)

    def add_dest(self, dest: RealServer) -> None:
        """`dest` is usable again in the sets that hold it. A removed server that sets
        still hold is the one the kernel takes back from its trash when a server with the
        same address and port is added, so set members naming it become `dest`."""
        live = self._live
        live.add(dest)
        for en in self._table.entries.values():
            members = en[_MEMBERS]
            for i, old in enumerate(members):
                if old not in live and same_dest(old, dest):
                    members[i] = dest

    def del_dest(self, dest: RealServer) -> None:
        """Sets keep `dest` (it still counts towards a set's size and can be the member
        shed), but it is never chosen from a set again (IP_VS_DEST_F_AVAILABLE cleared)."""
        self._live.discard(dest)

    def schedule(self, flow: Flow) -> RealServer | None:
        """For a known destination address: refresh its last use, take the set's least
        loaded usable member (see `set_least`); if the set has two or more members and has
        not changed for more than `expiration`, shed its most loaded member (`set_most`) --
        the member just taken is still returned if it was the one shed. If that member
        exists and is not overloaded by the half-load rule (lblc.is_overloaded), it is the
        answer. Otherwise the wlc choice over the list, added at the head of the set if
        not already in it. For an unknown address, the wlc choice starts a one-member set.
        None (cache untouched) when wlc finds no available server."""
        now = self.clock()
        tbl = self._table
        if now >= tbl.next_tick:
            tbl.expiration = self.expiration
            tbl.expire(now)
        key = flow.daddr_int
        en = tbl.entries.get(key)
        if en is None:
            dest = weighted_least(self.servers)
            if dest is None:
                return None
            tbl.entries[key] = [[dest], now, bucket_of(flow.daddr_fold), now]
            tbl.count += 1
            return dest
        en[_LASTUSE] = now
        members = en[_MEMBERS]
        dest = set_least(members, self._live)
        if len(members) > 1 and now > en[_LASTMOD] + self.expiration:
            most = set_most(members)
            if most is not None:
                members.remove(most)
                en[_LASTMOD] = now
        if dest is not None \
                and not (dest.activeconns > dest.weight and is_overloaded(dest, self.servers)):
            return dest
        dest = weighted_least(self.servers)
        if dest is None:
            return None
        for m in members:
            if m is dest:
                break
        else:
            members.insert(0, dest)
            en[_LASTMOD] = now
        return dest


SCHEDULER = LocalityBasedLeastConnectionReplication
