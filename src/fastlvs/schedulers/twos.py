"""twos: power of two choices (ip_vs_twos.c). Owns the two weighted random draws over the
servers that are neither overloaded nor of weight 0, and the duel between the two picks by
connection overhead per weight. The kernel's get_random_u32_below(n) is `rng.randrange(n)`
here, drawn twice per decision, first for choice 1 then for choice 2.
"""
from __future__ import annotations

import random
from bisect import bisect_left
from itertools import accumulate

from fastlvs.schedulers.base import Flow, RealServer, Scheduler

# The random source used when the scheduler is given none (rng=None).
_default_rng = random.Random()

_S32_MAX = 0x7FFFFFFF
_U32 = 0x100000000


def _s32(x: int) -> int:
    """x as the kernel's 32-bit int holds it: the kernel builds with wrapping signed overflow."""
    x &= 0xFFFFFFFF
    return x - _U32 if x > _S32_MAX else x


class TwoChoices(Scheduler):
    """Power of two choices: two servers drawn at random in proportion to weight, and the
    one with the lower (activeconns * 256 + inactconns) / weight wins; a tie keeps the
    first draw. No state between calls apart from the random source and a cache of the
    running weight sums (rebuilt whenever a weight or overloaded flag differs)."""

    name = "twos"

    def init_service(self) -> None:
        """Start with an empty cache of running weight sums."""
        self._ws: list[int] | None = None
        self._cum: list[int] = []

    def schedule(self, flow: Flow) -> RealServer | None:
        """Draw r1, r2 uniformly from 0..total weight (both ends included), walk the list
        subtracting each eligible server's weight, and take as choice N the first server
        at which rN has dropped to <= 0. Choice 2 wins only if weight2 * overhead1 >
        weight1 * overhead2 (32-bit products, as the kernel's). None when no server is
        available (every one overloaded or of weight <= 0, or an empty list); no random
        number is drawn then.
        """
        servers = self.servers
        # Every server's weight and flag are read on every call, as the kernel's first loop
        # does; only the running sums over them are reused while the reads are unchanged.
        ws = [0 if rs.overloaded else rs.weight for rs in servers]
        if ws == self._ws:
            cum = self._cum
        else:
            cum = self._sums(ws)
        total = cum[-1] if cum else 0
        if not total:
            return None
        if total >= _S32_MAX:
            # The kernel's int sum wraps past 2**31 - 1 (it takes weights near the limit).
            return self._schedule_wrapped()
        rng = self.rng
        if rng is None:
            rng = _default_rng
        total += 1
        r1 = rng.randrange(total)
        r2 = rng.randrange(total)
        # The walk stops at the first eligible server whose running sum reaches r (r = 0
        # behaves like r = 1: the first eligible server); a server of weight 0 never raises
        # the sum, so the first index reaching it is always an eligible one.
        c1 = servers[bisect_left(cum, r1 or 1)]
        c2 = servers[bisect_left(cum, r2 or 1)]
        w1 = c1.weight
        w2 = c2.weight
        o1 = (c1.activeconns << 8) + c1.inactconns
        o2 = (c2.activeconns << 8) + c2.inactconns
        a = w2 * o1
        b = w1 * o2
        # Weights are >= 1 here, so a product inside the int range has its overhead inside
        # it too; only outside it do the kernel's 32-bit wraps change anything.
        if not (-_S32_MAX <= a <= _S32_MAX and -_S32_MAX <= b <= _S32_MAX):
            a = _s32(w2 * _s32(o1))
            b = _s32(w1 * _s32(o2))
        return c2 if a > b else c1

    def _sums(self, ws: list[int]) -> list[int]:
        # A weight below 0 is skipped by the kernel like 0 (the kernel's own control path
        # refuses one; here an attribute could still be set so).
        self._ws = ws
        self._cum = list(accumulate(w if w > 0 else 0 for w in ws))
        return self._cum

    def _schedule_wrapped(self) -> RealServer | None:
        # The same walk with every int operation wrapped to 32 bits as the kernel's are:
        # the sum, the draw bound (passed as u32; 0 means any u32), the draws read back as
        # int, the subtractions. Should a walk end without a pick (the kernel's code allows
        # for it), choice 1 stays the last eligible server of the first loop (weight -1,
        # overhead 0) and choice 2 stays unset, as there.
        servers = self.servers
        rng = self.rng
        if rng is None:
            rng = _default_rng
        total = 0
        c1 = None
        for rs in servers:
            if not rs.overloaded:
                w = rs.weight
                if w > 0:
                    total = _s32(total + w)
                    c1 = rs
        bound = _s32(total + 1) & 0xFFFFFFFF
        r1 = _s32(rng.randrange(bound or _U32))
        r2 = _s32(rng.randrange(bound or _U32))
        w1 = w2 = -1
        o1 = o2 = 0
        c2 = None
        for rs in servers:
            if rs.overloaded:
                continue
            w = rs.weight
            if w <= 0:
                continue
            r1 = _s32(r1 - w)
            r2 = _s32(r2 - w)
            if r1 <= 0 and w1 == -1:
                c1, w1, o1 = rs, w, _s32((rs.activeconns << 8) + rs.inactconns)
            if r2 <= 0 and w2 == -1:
                c2, w2, o2 = rs, w, _s32((rs.activeconns << 8) + rs.inactconns)
            if w1 != -1 and w2 != -1:
                break
        if c2 is not None and _s32(w2 * o1) > _s32(w1 * o2):
            return c2
        return c1


SCHEDULER = TwoChoices
