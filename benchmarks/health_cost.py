"""What 1,000 health checks cost the forwarding (root): the peers benchmark's DR measurement
(benchmarks/peers.py: 60-byte UDP flood of 70,000 flows from CPU0, `fastlvs --mode dr
--backend xdp --cpu 1` confined to CPU1, delivered pps counted at the real servers' XDP
sinks) with the daemon started from a keepalived.conf whose two real servers carry 500
TCP_CHECKs each (distinct connect_port, delay_loop 1: 1,000 checks a second, every one
against a real listener in the real server's namespace, so they succeed), against the same
file without the checkers; interleaved rounds, one run. The checker process is the daemon's
child (nice 10) and, started after `--cpu 1` pinned the daemon, shares CPU1 with it (arm
"checks"); arm "checks_elsewhere" moves it to the other CPU once it runs, as a director
whose checker process is not confined to the forwarding core would have it.

    .venv/bin/python -m benchmarks.health_cost [--reps 7] [--seconds 3] [--checkers 1000]
        [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import shutil
import tempfile
import threading
import time

from benchmarks.peers import (DIR_CPU, GEN_CPU, PY, ROOT, SRC, START_TIMEOUT, VIP, VPORT, Ctx,
                              OutOfTime, Procs, Sink, Topo, build, log, one_run, reset_dir, run,
                              task_seconds, wait_line)

PORT0 = 20000                     # the listeners' ports: PORT0 .. PORT0 + checkers/2 - 1
CONNECT_TIMEOUT, RETRY, DELAY_BEFORE_RETRY = 3, 1, 1


def listen(first: int, n: int) -> None:
    """n TCP listeners (first..first+n-1) that accept and close, in this process; answers
    "c" on stdin with the number of connections accepted so far."""
    socks = {}
    ep = select.epoll()
    for port in range(first, first + n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(128)
        s.setblocking(False)
        socks[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
    ep.register(sys.stdin.fileno(), select.EPOLLIN)
    accepted = 0
    print("ready", flush=True)
    while True:
        for fd, _ in ep.poll():
            if fd == sys.stdin.fileno():
                if not sys.stdin.readline():
                    return
                print(accepted, flush=True)
                continue
            try:
                conn, _ = socks[fd].accept()
            except BlockingIOError:
                continue
            accepted += 1
            conn.close()


class Listeners:
    def __init__(self, procs: Procs, ns: str, n: int):
        self.p = procs.start(["ip", "netns", "exec", ns, PY, "-m", "benchmarks.health_cost",
                              "listen", str(PORT0), str(n)], cpu=GEN_CPU,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT, env=_env())
        wait_line(self.p, self.p.stdout, "ready", 20)

    def count(self) -> int:
        self.p.stdin.write("c\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], 5)
        if not r:
            raise RuntimeError("listener did not answer")
        return int(self.p.stdout.readline())


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), ROOT]))


def keepalived_conf(t: Topo, per_rs: int) -> str:
    checks = "".join(f"""        TCP_CHECK {{
            connect_port {PORT0 + i}
            connect_timeout {CONNECT_TIMEOUT}
            retry {RETRY}
            delay_before_retry {DELAY_BEFORE_RETRY}
        }}
""" for i in range(per_rs))
    servers = "".join(f"""    real_server {ip} {VPORT} {{
        weight 1
{checks}    }}
""" for ip in t.rs_ip)
    return f"""virtual_server {VIP} {VPORT} {{
    delay_loop 1
    lvs_sched wlc
    lvs_method DR
    protocol UDP
{servers}}}
"""


def children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def start_daemon(ctx: Ctx, conf: str, name: str, cpu: bool = True):
    t = ctx.topo
    t.nsx(t.dir, "ip", "addr", "add", f"{VIP}/32", "dev", t.d0)
    sock = os.path.join(ctx.tmp, f"fastlvs-{name}.sock")
    cmd = ["ip", "netns", "exec", t.dir, PY, "-m", "fastlvs", "--mode", "dr", "-i", t.d0,
           "--keepalived-conf", conf, "--socket", sock, "--backend", "xdp"]
    if cpu:
        cmd += ["--cpu", str(DIR_CPU)]
    p = ctx.procs.start(cmd, cpu=DIR_CPU, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True, env=_env(), cwd=ROOT)
    seen = wait_line(p, p.stderr, "ready", START_TIMEOUT)
    p.lines = seen.splitlines()
    # the rest is drained as it comes: a full pipe would stop the daemon's loop
    threading.Thread(target=_drain, args=(p,), daemon=True).start()
    return p, sock


def _drain(p):
    try:
        for line in p.stderr:
            p.lines.append(line.rstrip())
    except (OSError, ValueError):       # closed when the daemon is stopped
        pass


def admin(ctx: Ctx, sock: str, *args) -> str:
    t = ctx.topo
    return t.nsx(t.dir, PY, "-m", "fastlvs", "admin", "--socket", sock, *args, check=False,
                 cwd=ROOT, env=_env()).stdout


def in_table(text: str, t: Topo) -> int:
    return sum(f"{ip}:{VPORT}" in text for ip in t.rs_ip)


ARMS = ("checks", "none", "checks_elsewhere")


def one_case(ctx: Ctx, conf: str, arm: str, listeners, args) -> dict:
    """One flood run of one arm: "none" (the file without checkers), "checks" (the daemon as
    it is: its checker process inherits --cpu's CPU), "checks_elsewhere" (the harness moves
    the checker process to the other CPUs once it runs: what it costs off the director's
    core)."""
    t = ctx.topo
    reset_dir(t)
    p = None
    try:
        p, sock = start_daemon(ctx, conf, arm, cpu=not args.no_cpu)
        kids = children(p.pid)
        inherited = sorted(set().union(*(os.sched_getaffinity(k) for k in kids))) if kids else []
        if arm == "checks_elsewhere":
            others = set(os.sched_getaffinity(0)) - {DIR_CPU}
            for pid in kids:
                os.sched_setaffinity(pid, others)
        # every checker's first verdict comes within 1 s + warmup (delay_loop); a server is
        # in the table once all 500 of its checkers said up
        started = time.monotonic()
        deadline = started + 30
        while True:
            before = admin(ctx, sock, "-Ln")
            if in_table(before, t) == 2 and (arm == "none" or time.monotonic() - started > 3):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"real servers missing before the run:\n{before}\n"
                                   + "\n".join(p.lines[-6:]))
            time.sleep(0.3)
        t.pin_napi(0 if args.no_cpu else None)
        # the director's own CPU: its process, NAPI threads, and the checker process while
        # that shares the director's CPU
        ctx.own_pids = [p.pid, *(kids if arm == "checks" else []), *t.napi_threads()]
        n0 = len(p.lines)
        a0 = sum(x.count() for x in listeners)
        k0 = task_seconds(kids)
        r = one_run(ctx, 0.0, args.warmup, args.seconds)
        k1 = task_seconds(kids)
        a1 = sum(x.count() for x in listeners)
        after = admin(ctx, sock, "-Ln")
        downs = [ln for ln in p.lines[n0:] if " down: " in ln]
        span = args.warmup + args.seconds + 0.3
        r.update({"checks_per_s": (a1 - a0) / span, "checker_cpu": (k1 - k0) / span,
                  "checker_pids": kids, "checker_cpus_as_started": inherited,
                  "servers_in_table_after": in_table(after, t),
                  "checker_downs": len(downs), "checker_down_lines": downs[:3]})
        if p.poll() is not None:
            raise RuntimeError("the daemon exited")
        return r
    finally:
        if p is not None:
            ctx.procs.stop(p)
        ctx.own_pids = []
        reset_dir(t)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "listen":
        listen(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds of flood before measuring")
    ap.add_argument("--checkers", type=int, default=1000, help="TCP_CHECKs (even; half per RS)")
    ap.add_argument("--no-cpu", action="store_true",
                    help="the daemon without --cpu (started on CPU1 by taskset, its NAPI threads "
                         "pinned there at nice 0, as peers' fastlvs_dr_xdp_nocpu): less fast, "
                         "but a busy machine's other tasks do not starve its NAPI threads")
    ap.add_argument("--arms", default=",".join(ARMS), help="a subset of " + ",".join(ARMS))
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (namespaces, XDP)")
        return 2
    arms = tuple(a for a in ARMS if a in args.arms.split(","))
    if "none" not in arms or len(arms) < 2 or set(args.arms.split(",")) - set(ARMS):
        ap.error("--arms: none and at least one of checks, checks_elsewhere")
    per_rs = args.checkers // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    topo, procs = Topo(), Procs()
    tmp = tempfile.mkdtemp(prefix="fastlvs-health-cost-")

    def out_of_time(signum, frame):
        raise OutOfTime(f"stopped: --max-minutes {args.max_minutes} reached or SIGTERM")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.signal(signal.SIGTERM, out_of_time)
    signal.alarm(max(1, int(args.max_minutes * 60)))
    runs = {arm: [] for arm in ARMS}
    errors = []
    load = os.getloadavg()
    try:
        bins = build(tmp)
        arch_inc = "/usr/include/" + run("gcc", "-dumpmachine").stdout.strip()
        sink_tcp = os.path.join(tmp, "sink_tcp.bpf.o")
        run("clang", "-O2", "-g", "-Wall", "-target", "bpf", "-DSINK_PASS_TCP", "-I", arch_inc,
            "-I", SRC, "-c", os.path.join(SRC, "sink.bpf.c"), "-o", sink_tcp, timeout=120)
        bins["sink"] = sink_tcp
        topo.build()
        ctx = Ctx(topo, procs, bins, tmp)
        ctx.sinks = [Sink(procs, topo.rs[i], topo.rn[i], bins) for i in range(2)]
        listeners = [Listeners(procs, ns, per_rs) for ns in topo.rs]
        confs = {}
        for name, n in (("checks", per_rs), ("none", 0)):
            confs[name] = os.path.join(tmp, f"keepalived-{name}.conf")
            with open(confs[name], "w") as f:
                f.write(keepalived_conf(topo, n))
        for rep in range(args.reps):
            k = rep % len(arms)                  # each round starts one arm later
            for name in arms[k:] + arms[:k]:
                try:
                    r = one_case(ctx, confs["none" if name == "none" else "checks"], name,
                                 listeners, args)
                except Exception as e:       # one failed run must not lose the others
                    errors.append(f"{name} #{rep + 1}: {str(e)[-800:]}")
                    log(f"{name} #{rep + 1}: FAILED: {str(e)[-800:]}")
                    continue
                runs[name].append(r)
                log(f"{name} #{rep + 1}: {r['pps'] / 1e6:.3f} Mpps ({r['us_per_packet'] or 0:.2f} "
                    f"µs/packet CPU{DIR_CPU}), {r['checks_per_s']:.0f} checks/s, checker "
                    f"{100 * r['checker_cpu']:.1f}% of a core, {r['checker_downs']} checker "
                    f"downs, steal {100 * r['steal']:.0f}%")
    except OutOfTime as e:
        log(f"{e}; what was measured so far is reported")
    finally:
        signal.alarm(0)
        procs.stop_all()
        topo.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    def med(arm, key="pps"):
        vals = [r[key] for r in runs[arm]]
        return statistics.median(vals) if vals else None

    def paired(a, b):
        pairs = [x["pps"] / y["pps"] for x, y in zip(runs[a], runs[b]) if y["pps"]]
        return statistics.median(pairs) if pairs else None

    summary = {}
    for arm in (a for a in arms if a != "none"):
        m, base = med(arm), med("none")
        own, own0 = med(arm, "own_us_per_packet"), med("none", "own_us_per_packet")
        summary[arm] = {"median_pps": m, "ratio_of_medians": m / base if m and base else None,
                        "own_us_per_packet": own, "own_us_ratio": own / own0 if own and own0 else None,
                        "paired_ratio": paired(arm, "none"),
                        "checks_per_s": med(arm, "checks_per_s"),
                        "checker_cpu": med(arm, "checker_cpu"),
                        "checker_downs": sum(r["checker_downs"] for r in runs[arm])}
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "kernel": platform.release(),
           "cpus": os.cpu_count(), "loadavg_before": load, "loadavg_after": os.getloadavg(),
           "checkers": 2 * per_rs, "delay_loop": 1, "connect_timeout": CONNECT_TIMEOUT,
           "retry": RETRY, "delay_before_retry": DELAY_BEFORE_RETRY,
           "reps": args.reps, "seconds": args.seconds, "daemon_cpu_option": not args.no_cpu, "none_median_pps": med("none"),
           "summary": summary, "runs": runs, "errors": errors}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print()
    for arm, sm in summary.items():
        if sm["ratio_of_medians"]:
            print(f"{2 * per_rs} checkers ({arm}) / none: {sm['ratio_of_medians']:.3f} (medians "
                  f"{sm['median_pps'] / 1e6:.3f} / {med('none') / 1e6:.3f} Mpps), paired "
                  f"{sm['paired_ratio']:.3f}; {sm['checks_per_s']:.0f} checks/s, checker "
                  f"process {100 * sm['checker_cpu']:.1f}% of a core, {sm['checker_downs']} "
                  f"checker downs; director's own CPU per delivered packet (its processes, "
                  f"checker included, and NAPI threads) {sm['own_us_ratio']:.3f}x")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
