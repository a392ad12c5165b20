"""Connection sync of the reference engine (the pure-Python twin of dataplane/sync.pxi): the
master's per-packet policy of Linux 6.1 (ip_vs_sync_conn_needed) and its packing into v1
messages through fastlvs.sync.protocol, and the backup's install/refresh of decoded entries
(ip_vs_proc_conn). reference.Engine takes it in as a mixin; the differential tests hold the
two engines to the same messages, tables and counters.
"""
from __future__ import annotations

import collections
import ipaddress

from fastlvs.engine import contract as K
from fastlvs.engine.reference_sctp import TIMEOUTS as SCTP_TIMEOUTS

CF_TEMPLATE, CF_INACTIVE, CF_NOOUTPUT, CF_INVALID = 1, 2, 4, 8
SVC_F_ONEPACKET, SVC_F_FWMARK = 1, 2
NS = 1_000_000_000
FLUSH_NS = 2 * NS                 # IPVS_SYNC_FLUSH_TIME
TPL_ASSURED = 1
S_ESTABLISHED, S_SYN_RECV, S_SYNACK = 1, 3, 10
SYNC_STATES_TCP = {1, 4, 6, 7, 5}  # ESTABLISHED FIN_WAIT CLOSE CLOSE_WAIT TIME_WAIT
SCTP_ESTABLISHED = 8
SYNC_STATES_SCTP = {8, 9, 10, 11, 13}  # ESTABLISHED SHUTDOWN_SENT/RECEIVED/ACK_SENT CLOSED
ENTRY_V4, ENTRY_V6 = 36, 72
HEADER = 8
F_MASQ, F_TUNNEL, F_DROUTE = 0x0000, 0x0002, 0x0003      # IP_VS_CONN_F_*
F_SYNC, F_NOOUTPUT, F_INACTIVE, F_TEMPLATE = 0x0020, 0x0080, 0x0100, 0x1000
F_BACKUP_MASK = 0x1F87

# sync_stats' names, as dataplane/sync.pxi's SYNC_COUNTER_NAMES (a test holds them equal)
COUNTER_NAMES = (
    "sent", "sent_conns", "sent_bytes", "queue_overflow", "queue_overflow_conns",
    "received", "received_bytes", "received_conns", "installed", "updated",
    "refused_no_service", "refused_no_dest", "refused_table_full", "refused_pe",
    "refused_protocol", "ignored_replaced", "dropped",
    "drop_short", "drop_size_mismatch", "drop_foreign_syncid", "drop_not_v1",
    "drop_truncated", "drop_entry_overrun", "drop_entry_version", "drop_entry_type",
    "drop_entry_size", "drop_option_truncated", "drop_option_length", "drop_option_seq",
    "drop_option_pe_data", "drop_option_pe_name",
    "skip_unknown_option", "skip_unknown_protocol", "skip_bad_state", "skip_bad_pe")
_FLAGS_OF_FWD = {K.FWD_NAT: F_MASQ, K.FWD_TUN: F_TUNNEL, K.FWD_DR: F_DROUTE}


def _protocol():
    # the wire format, imported when sync is first used: the reference engine alone
    # imports nothing of fastlvs but the contract
    from fastlvs.sync import protocol
    return protocol


class _Meta:
    __slots__ = ("endtime", "in_pkts", "old_state")

    def __init__(self, now):
        self.endtime = (now // 1_000_000) & ~3
        self.in_pkts = 0
        self.old_state = 0


class SyncMixin:
    """The sync_* methods of reference.Engine (see the extension's for their contracts)."""

    def _sync_init(self):
        self.sync_meta = None          # index -> _Meta, once sync has started
        self.sync_master = self.sync_backup = False
        self.sync_master_syncid = self.sync_backup_syncid = 0
        self.sync_maxlen = 0
        self.sync_cur = None           # [entries (bytes), length, first_ns, end]
        self.sync_queue = collections.deque()   # (message, nconns)
        self.sync_counters = dict.fromkeys(COUNTER_NAMES, 0)

    # -- sysctls ---------------------------------------------------------------------------------
    def _sync_check_pair(self, name, v):
        th, per = self.sysctl.get("sync_threshold", 0), self.sysctl.get("sync_period", 0)
        if name == "sync_threshold" and per and v >= per:
            raise ValueError(f"sync_threshold must be below sync_period ({per}), got {v}")
        if name == "sync_period" and v and th >= v:
            raise ValueError(f"sync_period must be above sync_threshold ({th}) or 0, got {v}")

    # -- control -------------------------------------------------------------------------------
    def _sync_meta_on(self):
        if self.sync_meta is None:
            self.sync_meta = {i: _Meta(self.now) for i in self.conn_table}

    def sync_start_master(self, syncid, maxlen):
        if not 0 <= syncid <= 255:
            raise ValueError(f"syncid must be 0..255, got {syncid}")
        if not 1 <= maxlen <= 65507:
            raise ValueError(f"sync maxlen must be 1..65507, got {maxlen}")
        self._sync_meta_on()
        self.sync_cur = None
        self.sync_queue.clear()
        self.sync_maxlen = maxlen
        self.sync_master_syncid = syncid
        self.sync_master = True

    def sync_stop_master(self):
        self.sync_master = False
        self.sync_cur = None
        self.sync_queue.clear()

    def sync_start_backup(self, syncid):
        if not 0 <= syncid <= 255:
            raise ValueError(f"syncid must be 0..255, got {syncid}")
        self._sync_meta_on()
        self.sync_backup_syncid = syncid
        self.sync_backup = True

    def sync_stop_backup(self):
        self.sync_backup = False

    def sync_stats(self):
        out = dict(self.sync_counters)
        out["queued"] = len(self.sync_queue) + (1 if self.sync_cur else 0)
        out["master"] = int(self.sync_master)
        out["backup"] = int(self.sync_backup)
        return out

    # -- master ----------------------------------------------------------------------------------
    def _sync_meta_new(self, i, now):
        if self.sync_meta is not None:
            self.sync_meta[i] = _Meta(now)

    def _sync_needed(self, c, m, pkts, now):
        # ip_vs_sync_conn_needed, in ms of frame time
        s = self.sysctl
        orig = m.endtime
        nowt = now // 1_000_000
        tmo = c.timeout * 1000
        n = (nowt + tmo) & ~3
        force = False
        if c.flags & CF_TEMPLATE:
            pass
        elif s["sync_persist_mode"] and c.ctl:
            return False
        elif c.proto == 6:
            if c.state not in SYNC_STATES_TCP:
                return False
            force = c.state != m.old_state
            if force and c.state != S_ESTABLISHED:
                m.old_state, m.endtime = c.state, n
                return True
        elif c.proto == 132:
            if c.state not in SYNC_STATES_SCTP:
                return False
            force = c.state != m.old_state
            if force and c.state != SCTP_ESTABLISHED:
                m.old_state, m.endtime = c.state, n
                return True
        refresh = s["sync_refresh_period"] * 1000
        if refresh > 0:
            if abs(n - orig) < min(refresh, max(tmo >> 1, 10000)):
                retries = orig & 3
                if retries >= s["sync_retries"]:
                    return False
                if nowt < orig - tmo + (refresh >> 3):
                    return False
                n |= retries + 1
        period, threshold = s["sync_period"], s["sync_threshold"]
        if period > 0:
            if not c.flags & CF_TEMPLATE and pkts % period != threshold:
                return False
        elif not refresh and pkts != threshold:
            return False
        m.old_state, m.endtime = c.state, n
        return True

    def _sync_enqueue(self, cur):
        entries = cur[0]
        body = b"".join(entries)
        P = _protocol()
        msg = P.HEADER.pack(0, self.sync_master_syncid, HEADER + len(body),
                            len(entries), P.SYNC_PROTO_VER, 0) + body
        if self.sync_master and len(self.sync_queue) < self.sysctl["sync_qlen_max"]:
            self.sync_queue.append((msg, len(entries)))
        else:
            self.sync_counters["queue_overflow"] += 1
            self.sync_counters["queue_overflow_conns"] += len(entries)

    def _sync_append(self, c, now):
        d = self.dests[c.dest]
        sv = self.svcs.get(d.svc)
        mark = 0
        if sv is not None and sv.flags & SVC_F_FWMARK:
            # a mark service's address is the mark (v4) or the mark << 96 (v6)
            mark = sv.vaddr >> 96 or sv.vaddr
        vaddr, proto = self.vips[c.vip].addr, c.proto
        if c.flags & CF_TEMPLATE:
            # a template is of its dest's family; a mark's has the mark as its address
            # (in the first 4 bytes) and protocol IP
            v6 = d.raddr > 0xFFFFFFFF
            if mark:
                vaddr, proto = (mark << 96 if v6 else mark), 0
        else:
            v6 = vaddr > 0xFFFFFFFF
        fl = _FLAGS_OF_FWD.get(c.fwd, F_DROUTE)
        if c.flags & CF_TEMPLATE:
            fl |= F_TEMPLATE | F_INACTIVE
            if c.fwd != K.FWD_NAT:
                fl |= F_NOOUTPUT
            dport = d.rport if c.vport else 0
        else:
            if c.flags & CF_INACTIVE:
                fl |= F_INACTIVE
            if c.flags & CF_NOOUTPUT:
                fl |= F_NOOUTPUT
            dport = self._rport(c)
        ip = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
        P = _protocol()
        entry = P.encode_conn(P.SyncConn(
            protocol=proto, caddr=str(ip(c.caddr)), cport=c.cport,
            vaddr=str(ip(vaddr)), vport=c.vport, daddr=str(ip(d.raddr)), dport=dport,
            flags=fl, state=c.state, timeout=c.timeout, fwmark=mark))
        cur = self.sync_cur
        if cur is not None:
            pad = -cur[1] & 3
            if cur[1] + pad + len(entry) > cur[3] or len(cur[0]) >= 255:
                self._sync_enqueue(cur)
                cur = None
            else:
                cur[0].append(b"\0" * pad + entry)
                cur[1] += pad + len(entry)
                return
        # a message ends at maxlen, or after its first entry when that is larger
        self.sync_cur = [[entry], HEADER + len(entry), now,
                         max(self.sync_maxlen, HEADER + len(entry))]

    def _sync_in_packet(self, ci, now):
        # after a client packet of conn ci was handled (ip_vs_in)
        c = self.conn_table[ci]
        m = self.sync_meta[ci]
        onepkt = (c.proto == 17 and c.dest != 0
                  and self.svcs[self.dests[c.dest].svc].flags & SVC_F_ONEPACKET)
        if c.ctl and c.proto == 6 and c.state == S_ESTABLISHED:
            self.conn_table[c.ctl - 1].state |= TPL_ASSURED
        if onepkt:
            pkts = self.sysctl["sync_threshold"]
        else:
            m.in_pkts += 1
            pkts = m.in_pkts
        if not self.sync_master:
            if onepkt and c.ctl:
                self.sync_meta[c.ctl - 1].in_pkts += 1
            return
        while True:
            if not onepkt and c.dest != 0 and self._sync_needed(c, m, pkts, now):
                self._sync_append(c, now)
            if c.flags & CF_TEMPLATE or not c.ctl:
                return
            ti = c.ctl - 1
            c, m = self.conn_table[ti], self.sync_meta[ti]
            m.in_pkts += 1
            pkts = m.in_pkts
            onepkt = False

    def _sync_out_packet(self, ci):
        self._sync_out_conn(self.conn_table[ci])

    def _sync_out_conn(self, c):
        if c.ctl and c.proto == 17:
            self.conn_table[c.ctl - 1].state |= TPL_ASSURED

    def sync_take(self, now_ns):
        out = []
        if not self.sync_master:
            return out
        if self.sync_cur is not None and now_ns >= self.sync_cur[2] + FLUSH_NS:
            cur, self.sync_cur = self.sync_cur, None
            self._sync_enqueue(cur)
        while self.sync_queue:
            msg, n = self.sync_queue.popleft()
            out.append(msg)
            self.sync_counters["sent"] += 1
            self.sync_counters["sent_conns"] += n
            self.sync_counters["sent_bytes"] += len(msg)
        return out

    def sync_queue_all(self, vaddr=None, start=0, limit=None, now_ns=None):
        now = self.now if now_ns is None else now_ns
        if not self.sync_master:
            raise RuntimeError("the sync master is not running")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        want = None if vaddr is None else int(ipaddress.ip_address(vaddr))
        end = self.used_end
        first = min(start, end)
        if limit is not None and limit < end - first:
            end = first + limit
        n = 0
        for i in range(first, end):
            c = self.conn_table.get(i)
            if c is None or c.dest == 0 or c.flags & CF_INVALID:
                continue
            if c.expires <= now and not (c.flags & CF_TEMPLATE and c.ctl):
                continue
            if want is not None and self.vips[c.vip].addr != want:
                continue
            self._sync_append(c, now)
            n += 1
        if end < self.used_end:
            return n, end
        if self.sync_cur is not None:
            cur, self.sync_cur = self.sync_cur, None
            self._sync_enqueue(cur)
        return n, None

    # -- backup ----------------------------------------------------------------------------------
    def sync_decode(self, datagram, syncid=0):
        d = _protocol().decode(bytes(datagram), syncid)
        conns = [{"protocol": c.protocol, "caddr": c.caddr, "cport": c.cport,
                  "vaddr": c.vaddr, "vport": c.vport, "daddr": c.daddr, "dport": c.dport,
                  "flags": c.flags, "state": c.state, "timeout": c.timeout,
                  "fwmark": c.fwmark, "in_seq": c.in_seq, "out_seq": c.out_seq,
                  "pe_data": c.pe_data, "pe_name": c.pe_name} for c in d.conns]
        return conns, list(d.skipped), d.error

    def sync_receive(self, datagram, now_ns):
        if not self.sync_backup:
            raise RuntimeError("the sync backup is not running")
        if now_ns > self.now:
            self.now = now_ns
        cnt = self.sync_counters
        cnt["received"] += 1
        cnt["received_bytes"] += len(datagram)
        d = _protocol().decode(bytes(datagram), self.sync_backup_syncid)
        cnt["received_conns"] += len(d.conns)
        for c in d.conns:
            self._sync_install(c, now_ns)
        for r in d.skipped:
            cnt["skip_" + r] += 1
        if d.error is not None:
            cnt["drop_" + d.error] += 1
            cnt["dropped"] += 1

    def _sync_find_dest(self, svc_id, daddr, dport):
        zero = 0
        for i, d in enumerate(self.dests):
            if i and d.available and d.svc == svc_id and d.raddr == daddr:
                if d.rport == dport:
                    return i
                if d.rport == 0 and not zero:
                    zero = i
        return zero

    def _sync_mark_svc(self, mark, v6):
        # ip_vs_svc_fwm_find: the service on the mark's VIP of the entry's family, 0 = none
        v = self.vip_index.get((0, mark << 96 if v6 else mark, 0), 0)
        sid = self.vips[v].svc if v else 0
        return sid if sid and sid in self.svcs and self.svcs[sid].in_use else 0

    def _sync_install(self, s, now):
        # ip_vs_proc_conn (see sync.pxi's sync_install for what fastlvs refuses)
        cnt = self.sync_counters
        flags = (s.flags & F_BACKUP_MASK) | F_SYNC
        tmpl = bool(flags & F_TEMPLATE)
        inact = bool(flags & F_INACTIVE)
        if s.pe_data is not None:
            cnt["refused_pe"] += 1
            return
        if not tmpl and (s.protocol not in (6, 17, 132) or s.protocol == 132 and s.ipv6):
            cnt["refused_protocol"] += 1
            return
        caddr = int(ipaddress.ip_address(s.caddr))
        daddr = int(ipaddress.ip_address(s.daddr))
        vaddr = int(ipaddress.ip_address(s.vaddr))
        svc = self._sync_mark_svc(s.fwmark, s.ipv6) if s.fwmark else 0
        if svc and tmpl:
            vip = self.svcs[svc].vip
        else:
            vip = self._vip_find_in(s.protocol, vaddr, s.vport)
            if not vip and svc:
                vip = self.vip_index.get((s.protocol, vaddr, 0), 0)
            elif not vip:
                cnt["refused_no_service"] += 1
                return
        ci = None
        for i in self._chain((caddr, s.cport, s.protocol)):
            c = self.conn_table[i]
            if (c.vip == vip and c.vport == s.vport
                    and c.flags & (CF_TEMPLATE | CF_INVALID) == (CF_TEMPLATE if tmpl else 0)):
                ci = i
                break
        if ci is not None and self.conn_table[ci].expires <= now \
                and self._conn_expire(ci, now):
            ci = None
        if ci is not None and not tmpl:
            c = self.conn_table[ci]
            d = self.dests[c.dest]
            if c.dest == 0 or d.raddr != daddr or self._rport(c) != s.dport:
                if inact:
                    cnt["ignored_replaced"] += 1
                    return
                self._conn_free(ci)
                ci = None
        if ci is not None:
            c = self.conn_table[ci]
            if not tmpl and c.dest != 0 and bool(c.flags & CF_INACTIVE) != inact:
                d = self.dests[c.dest]
                if inact:
                    d.activeconns -= 1
                    d.inactconns += 1
                    c.flags |= CF_INACTIVE
                else:
                    d.activeconns += 1
                    d.inactconns -= 1
                    c.flags &= ~CF_INACTIVE
            cnt["updated"] += 1
        else:
            if not svc:
                svc = self.vips[vip].svc
            if not svc or svc not in self.svcs or not self.svcs[svc].in_use:
                cnt["refused_no_service"] += 1
                return
            dest = self._sync_find_dest(svc, daddr, s.dport)
            if not dest:
                cnt["refused_no_dest"] += 1
                return
            if not vip:
                if len(self.vips) >= K.MAX_VIPS:
                    cnt["refused_table_full"] += 1
                    return
                vip = self._vip_intern(s.protocol, vaddr, 0)
            ci = self._conn_new(caddr, s.cport, vip, s.protocol, dest,
                                CF_TEMPLATE if tmpl else 0, now)
            if ci is None:
                cnt["refused_table_full"] += 1
                return
            c = self.conn_table[ci]
            c.vport = s.vport
            if not tmpl and not inact:
                d = self.dests[dest]
                c.flags &= ~CF_INACTIVE
                d.inactconns -= 1
                d.activeconns += 1
            cnt["installed"] += 1
            if (s.protocol == 6 and not tmpl and s.state in (S_SYN_RECV, S_SYNACK)
                    and self.embryo is not None):
                self.embryo.append((ci, self._conn_bucket(c.key())))
        c.state = min(s.state, 255)
        if self.sync_meta is not None:
            m = self.sync_meta[ci]
            m.in_pkts = self.sysctl["sync_threshold"]
            m.old_state = c.state
        if s.timeout:
            t = s.timeout
        elif tmpl:
            t = 180
        elif s.protocol == 6:
            t = self.tcp_timeouts[s.state]
        elif s.protocol == 132:
            t = SCTP_TIMEOUTS[s.state]
        else:
            t = self.udp_timeout
        c.timeout = t
        c.expires = now + t * NS
