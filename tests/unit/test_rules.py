"""ipvsadm's command language and the ipvsadm-save format: parsing with ipvsadm's defaults
and checks, errors as FILE:LINE: reason, and save/restore round trips."""
import socket
import textwrap

import pytest

from fastlvs import schedulers
from fastlvs.control.model import FwdMethod, Proto, ServiceKey, ServiceTable
from fastlvs.control.ipvsadm import Command, CommandError, apply_command, parse_command
from fastlvs.control.rules import RulesError, dump_rules, iter_rules, load_rules, parse_rules

VIP = ("tcp", "10.0.0.1", 80)


def rules(s):
    return textwrap.dedent(s).lstrip("\n")


def dests(table, key=VIP):
    return [(d.addr, d.port, d.fwd.value, d.weight) for d in table.get(key).dests]


# -- parsing -------------------------------------------------------------------------------
def test_defaults_are_ipvsadms():
    t = parse_rules("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1\n")
    s = t.get(VIP)
    assert (s.sched_name, s.timeout) == ("wlc", 0)
    assert dests(t) == [("192.168.1.1", 80, "dr", 1)]


def test_long_options_and_short_options_mean_the_same():
    short = parse_rules(rules("""
        -A -t 10.0.0.1:80 -s sh -p 600 -M 255.255.255.0 -b sh-port
        -a -t 10.0.0.1:80 -r 192.168.1.1:8080 -m -w 3 -x 100 -y 10
        -a -t 10.0.0.1:80 -r 192.168.1.2 -i
        -a -t 10.0.0.1:80 -r 192.168.1.3 -g -w 0
    """))
    long = parse_rules(rules("""
        --add-service --tcp-service 10.0.0.1:80 --scheduler sh --persistent 600 --netmask 255.255.255.0 --sched-flags sh-port
        --add-server --tcp-service=10.0.0.1:80 --real-server 192.168.1.1:8080 --masquerading --weight=3 --u-threshold 100 --l-threshold 10
        --add-server --tcp-service 10.0.0.1:80 --real-server 192.168.1.2 --ipip
        --add-server --tcp-service 10.0.0.1:80 --real-server 192.168.1.3 --gatewaying --weight 0
    """))
    assert dump_rules(short, thresholds=True) == dump_rules(long, thresholds=True)
    d = long.get(VIP).dests[-1]
    assert (d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold) == (
        8080, FwdMethod.NAT, 3, 100, 10)


def test_clustered_short_options_comments_and_an_ipvsadm_prefix():
    t = parse_rules(rules("""
        # saved by hand

        ipvsadm -At 10.0.0.1:80 -srr -p300   # trailing comment
        -a -t 10.0.0.1:80 -r192.168.1.1:80 -mw5
    """))
    s = t.get(VIP)
    assert (s.sched_name, s.timeout) == ("rr", 300)
    assert dests(t) == [("192.168.1.1", 80, "nat", 5)]


def test_persistent_without_a_value_is_360_seconds():
    # libipvs' IPVS_SVC_PERSISTENT_TIMEOUT is 6*60 (the man page's "300" is not what runs)
    t = parse_rules("-A -t 10.0.0.1:80 -p -s rr\n-A -u 10.0.0.1:53 --persistent\n")
    assert t.get(VIP).timeout == 360 and t.get(("udp", "10.0.0.1", 53)).timeout == 360


def test_dr_and_tun_force_the_service_port_nat_keeps_its_own():
    t = parse_rules(rules("""
        -A -t 10.0.0.1:80
        -a -t 10.0.0.1:80 -r 192.168.1.1:8080 -g
        -a -t 10.0.0.1:80 -r 192.168.1.2:8080 -i
        -a -t 10.0.0.1:80 -r 192.168.1.3:8080 -m
        -a -t 10.0.0.1:80 -r 192.168.1.4 -m
    """))
    assert [(a, p) for a, p, _, _ in dests(t)] == [
        ("192.168.1.4", 80), ("192.168.1.3", 8080), ("192.168.1.2", 80), ("192.168.1.1", 80)]


def test_ipv6_forms():
    t = parse_rules(rules("""
        -A -u [2001:db8::1]:53 -s rr
        -a -u [2001:db8::1]:53 -r [2001:db8::10]:5353 -m
        -A -t 2001:db8::2 -p 60 -M 64
        -a -t 2001:db8::2 -r 2001:db8::20 -g
        -a -t 2001:db8::2 -r 192.168.1.1 -i
    """))
    assert dests(t, ("udp", "2001:db8::1", 53)) == [("2001:db8::10", 5353, "nat", 1)]
    s = t.get(("tcp", "2001:db8::2", 0))
    assert (s.timeout, s.netmask) == (60, 64)
    assert [(d.addr, d.port) for d in s.dests] == [("192.168.1.1", 0), ("2001:db8::20", 0)]


def test_dests_are_newest_first():
    t = parse_rules("-A -t 10.0.0.1:80 -s rr\n" + "".join(
        f"-a -t 10.0.0.1:80 -r 192.168.1.{i}\n" for i in (1, 2, 3)))
    assert [d.addr for d in t.get(VIP).dests] == ["192.168.1.3", "192.168.1.2", "192.168.1.1"]


def test_edits_deletes_clear_zero_and_set_apply_in_order():
    t = parse_rules(rules("""
        -A -t 10.0.0.1:80 -s rr
        -A -t 10.0.0.2:80
        -a -t 10.0.0.1:80 -r 192.168.1.1 -w 5
        -a -t 10.0.0.1:80 -r 192.168.1.2
        -e -t 10.0.0.1:80 -r 192.168.1.1 -m
        -d -t 10.0.0.1:80 -r 192.168.1.2
        -E -t 10.0.0.1:80 -s sh -p 60
        -D -t 10.0.0.2:80
        -Z
        -Z -t 10.0.0.1:80
        --set 3600 0 60
    """))
    assert [s.key for s in t] == [ServiceKey(Proto.TCP, "10.0.0.1", 80)]
    assert (t.get(VIP).sched_name, t.get(VIP).timeout) == ("sh", 60)
    # -e without -w puts the weight back to 1, as ipvsadm does
    assert dests(t) == [("192.168.1.1", 80, "nat", 1)]
    assert t.timeouts == {"tcp": 3600, "tcpfin": 120, "udp": 60}
    assert len(parse_rules("-A -t 10.0.0.1:80\n-C\n")) == 0


def test_parse_into_an_existing_table():
    t = ServiceTable()
    t.add_service(*VIP)
    parse_rules("-a -t 10.0.0.1:80 -r 192.168.1.1\n", table=t)
    assert len(t.get(VIP).dests) == 1


@pytest.mark.skipif(not hasattr(socket, "getservbyname"), reason="no services database")
def test_service_names_as_ports_as_ipvsadm_save_without_n_writes():
    try:
        http = socket.getservbyname("http", "tcp")
    except OSError:
        pytest.skip("no 'http' in the services database")
    t = parse_rules("-A -t 10.0.0.1:http\n-a -t 10.0.0.1:http -r 192.168.1.1:http -m\n")
    assert dests(t, ("tcp", "10.0.0.1", http)) == [("192.168.1.1", http, "nat", 1)]


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,error", [
    ("-A -t 10.0.0.300:80\n",
     "rules.txt:1: -t 10.0.0.300:80: '10.0.0.300' is not an IP address (host names are not "
     "looked up)"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r www.example.com:80\n",
     "rules.txt:2: -r www.example.com:80: 'www.example.com' is not an IP address (host names "
     "are not looked up)"),
    ("-A -t 10.0.0.1:70000\n",
     "rules.txt:1: -t 10.0.0.1:70000: port 70000 is outside 0..65535"),
    ("-A -t 10.0.0.1:80 --frob\n", "rules.txt:1: unknown option '--frob'"),
    ("-A -t 10.0.0.1:80 -q\n", "rules.txt:1: unknown option '-q'"),
    ("-A -t 10.0.0.1:80 -s\n", "rules.txt:1: -s: missing argument"),
    ("-A -t 10.0.0.1:80 -s -p\n", "rules.txt:1: -s: missing argument"),
    ("-a -t 10.0.0.1:80 -r 192.168.1.1\n",
     "rules.txt:1: -a for a service that was not added: -t 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-A -t 10.0.0.1:80 -s rr\n",
     "rules.txt:2: -A for a service that was already added: -t 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -w -1\n",
     "rules.txt:2: weight: -1 is outside 0..65535"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -w 65536\n",
     "rules.txt:2: weight: 65536 is outside 0..65535"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -w heavy\n",
     "rules.txt:2: weight: 'heavy' is not an integer"),
    ("\n# c\n-A -t 10.0.0.1:80 -s foo\n",
     "rules.txt:3: unknown scheduler 'foo'; valid: " + ", ".join(schedulers.names())),
    ("-A -t 10.0.0.1:80 -s sh -b sh-port,bogus\n",
     "rules.txt:1: sched-flags: invalid scheduler flag `bogus' (unknown flag 'bogus' for "
     "scheduler sh; valid: flag-1, flag-2, flag-3, sh-fallback, sh-port)"),
    ("-A -t 10.0.0.1:80 -b sh-port\n",
     "rules.txt:1: sched-flags: incompatible scheduler flag `sh-port' (sh-port is a flag of "
     "the sh scheduler, not of wlc)"),
    ("-A -t 10.0.0.1:80 -s rr -b flag-4\n",
     "rules.txt:1: sched-flags: invalid scheduler flag `flag-4' (unknown flag 'flag-4' for "
     "scheduler rr; valid: flag-1, flag-2, flag-3)"),
    ("-A -t 10.0.0.1:0\n", "rules.txt:1: Zero port specified for non-persistent service"),
    ("-A -t 10.0.0.1:80 -o\n",
     "rules.txt:1: One-Packet Scheduling is only for UDP virtual services"),
    ("-A -t 10.0.0.1:80 -p 0\n", "rules.txt:1: persistent: 0 is outside 1..2678400"),
    ("-A -t 10.0.0.1:80 -p 60 -M 255.255.0\n",
     "rules.txt:1: netmask: '255.255.0' is not a dotted IPv4 mask (illegal virtual server "
     "persistent mask specified)"),
    ("-A -t 10.0.0.1:80 -A -t 10.0.0.2:80\n", "rules.txt:1: multiple commands specified"),
    ("-A -t 10.0.0.1:80 -s rr -s wlc\n", "rules.txt:1: multiple 'scheduler' options specified"),
    ("-A -s rr\n",
     "rules.txt:1: You need to supply the 'service-address' option for the 'add-service' "
     "command"),
    ("-A -t 10.0.0.1:80 -w 3\n",
     "rules.txt:1: Illegal 'weight' option with the 'add-service' command"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -g -m\n",
     "rules.txt:2: multiple 'forwarding-method' options specified"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -y 5\n",
     "rules.txt:2: -a -t 10.0.0.1:80 -r 192.168.1.1:80: Numerical result out of range "
     "(l_threshold 5 is above u_threshold 0)"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1\n-a -t 10.0.0.1:80 -r 192.168.1.1\n",
     "rules.txt:3: -a -t 10.0.0.1:80 -r 192.168.1.1:80: Destination already exists "
     "(192.168.1.1:80)"),
    ("-A -t 10.0.0.1:80\n-d -t 10.0.0.1:80 -r 192.168.1.1\n",
     "rules.txt:2: -d -t 10.0.0.1:80 -r 192.168.1.1:80: No such destination (192.168.1.1:80)"),
    ("-E -t 10.0.0.1:80\n", "rules.txt:1: -E for a service that was not added: -t 10.0.0.1:80"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 2001:db8::1 -m\n",
     "rules.txt:2: Different address family is allowed only for tunneling servers"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -m --tun-type ipip\n",
     "rules.txt:2: Tunnel options conflict with forward method"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -i --tun-type gue\n",
     "rules.txt:2: You need to supply the 'tun-port' option for the 'gue' tunnel type"),
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 192.168.1.1 -i --tun-csum\n",
     "rules.txt:2: Illegal 'tun-csum' option with the 'ipip' tunnel type"),
    ("-A -f 0 -s rr\n", "rules.txt:1: invalid fwmark value `0' specified"),
    ("-A -t 10.0.0.1:80 --pe sip\n",
     "rules.txt:1: --pe: fastlvs does not support persistence engines (--pe)"),
    ("--set 900 120\n", "rules.txt:1: --set option requires 3 timeout values"),
    ("-C extra\n", "rules.txt:1: unexpected argument extra"),
    ("--start-daemon master\n",
     "rules.txt:1: --start-daemon does not belong in a rules file (only -A -E -D -C -a -e -d -Z "
     "--set --mark-rule --del-mark-rules)"),
    ("-L -n\n", "rules.txt:1: -L does not belong in a rules file (only -A -E -D -C -a -e -d -Z "
                "--set --mark-rule --del-mark-rules)"),
    ("-t 10.0.0.1:80\n",
     "rules.txt:1: no command given (one of -A -E -D -C -a -e -d -L -Z -S -R --set)"),
])
def test_bad_lines_name_file_line_and_problem(text, error):
    with pytest.raises(RulesError) as e:
        parse_rules(text, "rules.txt")
    assert str(e.value) == error
    assert isinstance(e.value, ValueError)


def test_rules_error_fields_and_default_file_name():
    with pytest.raises(RulesError) as e:
        parse_rules("-A -t 10.0.0.1:80\n\n-Q\n")
    assert (e.value.filename, e.value.lineno, e.value.reason) == ("-", 3, "unknown option '-Q'")


def test_load_rules_names_the_file(tmp_path):
    p = tmp_path / "lvs.rules"
    p.write_text("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 192.168.1.1 -w 70000\n")
    with pytest.raises(RulesError, match=r"lvs\.rules:2: weight: 70000 is outside 0\.\.65535"):
        load_rules(p)
    p.write_text("-A -t 10.0.0.1:80 -s rr\n")
    assert load_rules(str(p)).get(VIP).sched_name == "rr"


# -- one command line (the admin CLI's share) ----------------------------------------------
def test_parse_command_fills_a_command():
    c = parse_command(["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080", "-m", "-w", "2"])
    assert c == Command("add-server", frozenset({"service-address", "real-server",
                                                  "forwarding-method", "weight"}),
                        ServiceKey(Proto.TCP, "10.0.0.1", 80), dest_addr="192.168.1.1",
                        dest_port=8080, fwd=FwdMethod.NAT, weight=2)
    assert c.flag == "-a"
    t = ServiceTable()
    apply_command(t, parse_command(["ipvsadm", "-A", "-t", "10.0.0.1:80"]))
    assert apply_command(t, c) is t.get(VIP).dests[0]


def test_parse_command_list_and_save_options():
    c = parse_command(["-Ln", "--stats", "--exact", "--nosort", "--sort"])
    assert (c.name, c.numeric, c.stats, c.exact, c.nosort, c.rate) == (
        "list", True, True, True, True, False)
    c = parse_command(["-L", "-t", "10.0.0.1:80", "--rate"])
    assert c.service == ServiceKey(Proto.TCP, "10.0.0.1", 80) and c.rate
    assert parse_command(["-lc", "-n"]).connection
    assert parse_command(["-L", "--timeout"]).list_timeout
    assert parse_command(["-S", "-n"]).numeric
    assert parse_command(["--help"]).name == "help"
    with pytest.raises(CommandError, match="options conflicts in the list command"):
        parse_command(["-L", "-c", "--stats"])
    with pytest.raises(CommandError, match="The option 'timeout' conflicts with the "
                                           "'connection' option in the 'list' command"):
        parse_command(["-L", "-c", "--timeout"])
    with pytest.raises(CommandError, match="Illegal 'stats' option with the 'save' command"):
        parse_command(["-S", "--stats"])
    with pytest.raises(CommandError, match="does not change the table"):
        apply_command(ServiceTable(), parse_command(["-L"]))


def test_iter_rules_yields_line_numbers():
    got = [(n, c.name) for n, c in iter_rules("# x\n-A -t 10.0.0.1:80\n\n-C\n")]
    assert got == [(2, "add-service"), (4, "flush")]


# -- saving --------------------------------------------------------------------------------
SAVED = rules("""
    -A -t 10.0.0.1:80 -s rr
    -a -t 10.0.0.1:80 -r 192.168.1.1:80 -g -w 1
    -a -t 10.0.0.1:80 -r 192.168.1.2:80 -i -w 0 --tun-type ipip
    -a -t 10.0.0.1:80 -r 192.168.1.10:8080 -m -w 3
    -A -t 10.0.0.2:0 -s wlc -p 600 -M 255.255.255.0
    -a -t 10.0.0.2:0 -r 192.168.2.1:0 -g -w 1
    -A -u 10.0.0.1:53 -s sh -p 360 -b sh-fallback,sh-port
    -A -u 10.0.0.1:5060 -s rr -o
    -A -t [2001:db8::1]:443 -s mh -p 60 -M 64 -b mh-port
    -a -t [2001:db8::1]:443 -r [2001:db8::10]:8443 -m -w 2
""")


def test_dump_is_what_ipvsadm_save_n_prints():
    assert dump_rules(parse_rules(SAVED)) == SAVED
    assert dump_rules(ServiceTable()) == ""


def test_dump_writes_flags_by_bit_and_generic_names_for_other_schedulers():
    t = ServiceTable()
    t.add_service("tcp", "10.0.0.1", 80, "sh", flags=["sh-port", "flag-1"])
    assert dump_rules(t) == "-A -t 10.0.0.1:80 -s sh -b sh-fallback,sh-port\n"


def test_round_trip_keeps_semantics():
    t = parse_rules(rules("""
        -A -t 10.0.0.1:80 -s wrr
        -a -t 10.0.0.1:80 -r 192.168.1.3:8080 -m -w 7 -x 100 -y 10
        -a -t 10.0.0.1:80 -r 192.168.1.1 -w 0
        -A -u [2001:db8::1]:53 -s rr -p
        -a -u [2001:db8::1]:53 -r 192.168.1.9 -i
    """))

    def semantics(table):
        return {s.key: (s.sched_name, s.timeout, s.netmask, s.flags, s.ops,
                        {(d.addr, d.port): (d.fwd, d.weight) for d in s.dests})
                for s in table}

    again = parse_rules(dump_rules(t))
    assert semantics(again) == semantics(t)
    assert dump_rules(again) == dump_rules(t)
    # thresholds only survive when asked for: ipvsadm -S never writes them
    assert again.get(VIP).find_dest("192.168.1.3", 8080).u_threshold == 0
    kept = parse_rules(dump_rules(t, thresholds=True)).get(VIP).find_dest("192.168.1.3", 8080)
    assert (kept.u_threshold, kept.l_threshold) == (100, 10)


def test_ipvsadm_round_trip_reverses_into_sorted_order_and_sort_false_keeps_list_order():
    t = parse_rules("-A -t 10.0.0.1:80 -s rr\n" + "".join(
        f"-a -t 10.0.0.1:80 -r 192.168.1.{i}\n" for i in (2, 3, 1)))
    assert [d.addr for d in t.get(VIP).dests] == ["192.168.1.1", "192.168.1.3", "192.168.1.2"]
    # ipvsadm -S sorts, -R re-adds each at the head: the list comes back reverse-sorted
    again = parse_rules(dump_rules(t))
    assert [d.addr for d in again.get(VIP).dests] == [
        "192.168.1.3", "192.168.1.2", "192.168.1.1"]
    # fastlvs' exact form writes oldest first, so restoring rebuilds the same list
    exact = parse_rules(dump_rules(t, sort=False))
    assert [d.addr for d in exact.get(VIP).dests] == [d.addr for d in t.get(VIP).dests]
