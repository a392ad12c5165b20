"""wrr: weighted round-robin (ip_vs_wrr.c). Owns the kernel's mark (current server `cl`,
current weight `cw`, top weight `mw`, step `di` = gcd of the positive weights), how every list
change recomputes it, and the pass-by-pass walk that picks the next server with weight >= cw.
A per-change table of the walk makes the usual pick O(1) without ever trusting it blindly:
every server the kernel would look at is still read live (see schedule()).
"""
from __future__ import annotations

from array import array
from bisect import bisect_left
from math import gcd

from fastlvs.schedulers.base import Flow, RealServer, Scheduler

_HEAD = -1
# Largest round (sum of weight/di over the servers) kept as a table; a bigger one is walked
# step by step, as the kernel does. 32768 entries cost about 3 MB.
ROUND_CAP = 1 << 15


class WeightedRoundRobin(Scheduler):
    """Weighted round-robin: passes over the list with a falling threshold cw (mw, mw - di,
    ..., 1); each pick is the next server, in list order, that is not overloaded and has
    weight >= cw. Over one full round a server of weight w is picked w / di times."""

    name = "wrr"

    def init_service(self) -> None:
        """Fresh mark: position at the head and cw = mw (the top of a round)."""
        self._cw = 0
        self._k = None
        self._mark_reset()

    def add_dest(self, dest: RealServer) -> None:
        """Any list change recomputes the mark (see _mark_reset)."""
        self._mark_reset()

    def del_dest(self, dest: RealServer) -> None:
        """Any list change recomputes the mark (see _mark_reset)."""
        self._mark_reset()

    def upd_dest(self, dest: RealServer | None) -> None:
        """Any edit recomputes the mark (see _mark_reset), even one that changed nothing."""
        self._mark_reset()

    def _mark_reset(self) -> None:
        # The kernel's dest_changed: restart from the head, recompute di and mw, and keep cw
        # where it was unless it no longer fits: above the new mw (or 0) it becomes mw, and
        # with di > 1 it is moved onto the new grid (a multiple of di, plus one) so the
        # round still ends with the cw = 1 pass. Overloaded servers count here too.
        g = 0
        top = 0
        for rs in self.servers:
            w = rs.weight
            if w > 0:
                g = gcd(g, w)
            if w > top:
                top = w
        di = g or 1
        mw = top - (di - 1)
        if self._k is not None:
            cw = self._round[self._k][1]
        else:
            cw = self._cw
        if cw > mw or cw == 0:
            cw = mw
        elif di > 1:
            cw = (cw // di) * di + 1
        self._di, self._mw, self._cw = di, mw, cw
        self._cl = _HEAD
        self._round: list | None = None   # the round table, built at the next pick
        self._k: int | None = None        # not None: the mark is round[_k] (see schedule)

    # -- the round table --------------------------------------------------------------------
    def _build_round(self) -> None:
        # One entry per pick of a full round, in the kernel's order, for the weights read
        # now: (server, cw, index, checks), where checks lists the (servers, cw) the walk
        # steps over just before reaching it (the rest of the previous pass, then the start
        # of this one). Built only when these weights are the ones the mark came from
        # (multiples of di, mw = max - di + 1): a weight edited without update() before the
        # build leaves the literal walk in charge until the next list change (one edited
        # after it is caught by the live reads in schedule()).
        self._round = []
        self._keys = array("q")
        servers = self.servers
        n1 = len(servers) + 1
        di, mw = self._di, self._mw
        weights = [rs.weight for rs in servers]
        vals = sorted({w for w in weights if w > 0}, reverse=True)
        if (mw <= 0 or not vals or any(v % di for v in vals) or vals[0] - (di - 1) != mw
                or sum(w for w in weights if w > 0) // di > ROUND_CAP):
            return
        rnd, keys = self._round, self._keys
        carry = ()           # the previous pass's tail, checked against its own cw
        cw = mw
        for b, v in enumerate(vals):
            # Passes with cw in (next smaller weight, v] all see the same candidates.
            lo = vals[b + 1] if b + 1 < len(vals) else 0
            picks, runs, run = [], [], []
            for i, w in enumerate(weights):
                if w >= v:
                    picks.append(i)
                    runs.append(tuple(run))
                    run = []
                else:
                    run.append(servers[i])
            tail = tuple(run)
            while cw > lo:
                for i, before in zip(picks, runs):
                    checks = carry + ((before, cw),) if before else carry
                    rnd.append((servers[i], cw, i, checks))
                    keys.append((mw - cw) * n1 + i)
                    carry = ()
                carry = ((tail, cw),) if tail else ()
                cw -= di
        if carry:
            # The last pass's tail is stepped over before the round starts again.
            s0, cw0, i0, checks0 = rnd[0]
            rnd[0] = (s0, cw0, i0, carry + checks0)
        self._n1 = n1

    def _align(self) -> None:
        # Find the mark (cl, cw) in the round table; a mark it does not hold (the head, or
        # a server no longer due at this cw) stays on the literal walk.
        self._k = None
        if not self._round or self._cl == _HEAD:
            return
        key = (self._mw - self._cw) * self._n1 + self._cl
        k = bisect_left(self._keys, key)
        if k < len(self._keys) and self._keys[k] == key:
            self._k = k

    # -- scheduling -------------------------------------------------------------------------
    def schedule(self, flow: Flow) -> RealServer | None:
        """The kernel's next pick. None when no server is available (all overloaded or of
        weight 0, or an empty list); the mark then moves as the kernel's does.

        Fast path: the round table names the server the kernel's walk reaches next and the
        servers it steps over on the way. Those are read live and must still have weight
        below their pass's cw, and the target must still be not overloaded with weight >= cw;
        if any read disagrees, the literal walk decides instead. Either way the answer is
        the kernel's for the attributes as they are now, at the kernel's cost in reads.
        """
        k = self._k
        if k is None:
            return self._walk()
        rnd = self._round
        k += 1
        if k == len(rnd):
            k = 0
        dest, cw, _, checks = rnd[k]
        if checks:
            for run, run_cw in checks:
                for rs in run:
                    if rs.weight >= run_cw:
                        return self._walk()
        if dest.weight >= cw and not dest.overloaded:
            self._k = k
            return dest
        return self._walk()

    def _walk(self) -> RealServer | None:
        # The kernel's walk, step by step, from the current mark.
        if self._round is None:
            self._build_round()
        k = self._k
        if k is not None:
            _, self._cw, self._cl, _ = self._round[k]
            self._k = None
        servers = self.servers
        n = len(servers)
        i = self._cl
        if self._mw == 0:
            return None
        di, mw = self._di, self._mw
        cw = self._cw
        last = i
        stop = None              # the server at which a final pass gives up
        last_pass = restarted = False
        result = None
        while True:
            i += 1
            while i < n:
                rs = servers[i]
                if not rs.overloaded and rs.weight >= cw:
                    result = rs
                    break
                if i == stop:
                    break
                i += 1
            else:
                # Past the end of the list: next pass, lower threshold.
                i = _HEAD
                cw -= di
                if cw <= 0:
                    cw = mw
                    # A whole round (cw = 1 included) saw every server: nobody is available.
                    if last_pass or last == _HEAD:
                        break
                    restarted = True
                last_pass = cw <= di
                if last_pass and restarted and last != _HEAD:
                    # The cw = 1 pass after the start was cut short by the start itself;
                    # finish it from the head up to (and including) the start.
                    stop = last
                continue
            break
        self._cl = i
        self._cw = cw
        self._align()
        return result


SCHEDULER = WeightedRoundRobin
