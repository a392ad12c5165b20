"""The keepalived.conf reader (control/keepalived.py): each corpus file under
tests/fixtures/keepalived/ gives the table keepalived 2.2.7 installed at start, as recorded from
real keepalived under the kernel oracle (`ipvsadm -Ln`, `--nosort` for the kernel's dest order,
`--thresholds`, `-L --timeout`; a file saying "written by hand" has its expected listing written
from keepalived's source instead), the resolved health checks, the globals, and the errors and
warnings of bad input."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastlvs.control.keepalived import KeepalivedError, load_keepalived
from fastlvs.control.listing import format_list, format_timeout
from fastlvs.control.model import FwdMethod, Proto, ServiceKey

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "keepalived"
EXPECTED = CORPUS / "expected"
CONFS = sorted(p.stem for p in CORPUS.glob("*.conf"))


def recorded(name: str) -> bool:
    lines = (CORPUS / f"{name}.conf").read_text().split("\n\n", 1)[0].splitlines()
    head = " ".join(ln.lstrip("#! ") for ln in lines if ln[:1] in "#!")
    assert ("recorded from keepalived 2.2.7" in head) != ("written by hand" in head), name
    return "recorded from keepalived 2.2.7" in head


def by_service(listing: str) -> dict[str, list[str]]:
    """service line -> its dest lines in listed order (the banner and titles dropped)."""
    out: dict[str, list[str]] = {}
    cur = None
    for line in listing.splitlines()[3:]:
        if line.startswith("  ->"):
            out[cur].append(line.rstrip())
        else:
            cur = line.rstrip()
            out[cur] = []
    return out


def test_the_corpus_covers_what_the_reader_reads():
    text = "\n".join((CORPUS / f"{n}.conf").read_text() for n in CONFS)
    text += "\n".join(p.read_text() for p in CORPUS.glob("conf.d*/*"))
    for kw in ("lvs_timeouts", "lvs_flush", "script_user", "enable_script_security",
               "virtual_server_group", "TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK",
               "UDP_CHECK", "DNS_CHECK", "PING_CHECK", "url", "digest", "status_code",
               "virtualhost", "connect_port", "connect_ip", "bindto", "bind_port", "misc_path",
               "misc_timeout", "misc_dynamic", "connect_timeout", "delay_loop", "retry",
               "nb_get_retry", "delay_before_retry", "warmup", "alpha", "omega", "lb_algo",
               "lvs_sched", "lb_kind", "lvs_method", "persistence_timeout",
               "persistence_granularity", "protocol", "ops", "sorry_server",
               "sorry_server_inhibit", "quorum", "hysteresis", "quorum_up", "quorum_down",
               "inhibit_on_failure", "notify_up", "notify_down", "weight", "uthreshold",
               "lthreshold", "include", "sh-port", "sh-fallback", "mh-port", "mh-fallback",
               "NAT", "DR", "TUN", "vrrp_instance", "enable_sni", "payload", "require_reply"):
        assert re.search(rf"(^|\s){re.escape(kw)}(\s|$)", text), kw
    for sched in ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr",
                  "sed", "nq", "twos"):
        assert re.search(rf"(lvs_sched|lb_algo) \"?{sched}\"?\n", text), sched


@pytest.mark.parametrize("name", CONFS)
def test_corpus_listing_is_what_keepalived_installed(name):
    cfg = load_keepalived(CORPUS / f"{name}.conf")
    assert format_list(cfg.table) == (EXPECTED / f"{name}.Ln").read_text()


@pytest.mark.parametrize("name", [n for n in CONFS if recorded(n)])
def test_corpus_dest_order_thresholds_and_timeouts_are_the_kernels(name):
    cfg = load_keepalived(CORPUS / f"{name}.conf")
    # --nosort lists services in the kernel's hash order: compare each service's dests
    assert by_service(format_list(cfg.table, sort=False)) == \
        by_service((EXPECTED / f"{name}.nosort").read_text())
    assert format_list(cfg.table, thresholds=True) == \
        (EXPECTED / f"{name}.thresholds").read_text()
    assert format_timeout(cfg.table) == (EXPECTED / f"{name}.timeout").read_text()


def key(vip: str, port: int, proto=Proto.TCP) -> ServiceKey:
    return ServiceKey(proto, vip, port)


def test_checker_values_inherit_checker_then_real_then_virtual_server():
    cfg = load_keepalived(CORPUS / "basic_nat.conf")
    vh = cfg.health.services[key("10.0.1.1", 80)]
    (c1,) = vh.servers[("10.1.1.1", 80)].checks
    (c2,) = vh.servers[("10.1.1.2", 80)].checks
    (c3,) = vh.servers[("10.1.1.3", 8080)].checks
    assert (c1.kind, c1.connect_ip, c1.connect_port) == ("TCP_CHECK", "10.1.1.1", 80)
    assert (c1.connect_timeout, c1.delay_loop, c1.retry, c1.delay_before_retry, c1.warmup) == \
        (3.0, 20.0, 1, 1.0, 20.0)        # warmup defaults to the checker's delay_loop
    assert (c2.connect_port, c2.connect_timeout, c2.retry) == (80, 10.0, 4)
    assert (c3.connect_port, c3.delay_loop, c3.retry, c3.delay_before_retry, c3.warmup) == \
        (8081, 7.0, 2, 2.5, 0.0)
    assert vh.weights == {("10.1.1.1", 80): 1, ("10.1.1.2", 80): 2, ("10.1.1.3", 8080): 3}
    assert (vh.quorum, vh.hysteresis, vh.sorry_server, vh.alpha, vh.omega) == \
        (1, 0, None, False, False)


def test_http_and_ssl_checks():
    cfg = load_keepalived(CORPUS / "dr_persist.conf")
    vh = cfg.health.services[key("10.0.2.1", 443)]
    (ssl,) = vh.servers[("10.1.2.1", 443)].checks
    assert ssl.kind == "SSL_GET" and ssl.sni and ssl.virtualhost == "www.example.org"
    assert ssl.urls[0].path == "/health"
    assert ssl.urls[0].status_codes == (200, 204, 300, 301, 302)
    assert (ssl.connect_timeout, ssl.retry, ssl.delay_before_retry) == (2.0, 1, 3.0)
    # the DR real server written with port 8443 is installed (and keyed) with the service's
    (http,) = vh.servers[("10.1.2.2", 443)].checks
    assert (http.connect_ip, http.connect_port, http.bindto, http.bind_port, http.retry) == \
        ("10.1.2.12", 8080, "10.1.255.254", 40000, 5)
    assert http.urls[0].digest == "9b3a0c85a887a256d6939da88aabd8cd"
    assert http.urls[0].virtualhost == "alt.example.org" and http.urls[0].status_codes == ()
    assert http.urls[1].path == "/status page"
    vh2 = cfg.health.services[key("10.0.2.2", 80)]
    (h3,) = vh2.servers[("10.1.2.3", 80)].checks
    assert h3.virtualhost == "rs.example.org"
    assert vh2.servers[("10.1.2.4", 80)].checks == ()


def test_udp_dns_checks_and_default_udp_protocol():
    cfg = load_keepalived(CORPUS / "tun_udp.conf")
    vh = cfg.health.services[key("10.0.3.1", 53, Proto.UDP)]
    (dns,) = vh.servers[("10.1.3.1", 53)].checks
    assert (dns.dns_type, dns.dns_name, dns.retry, dns.delay_before_retry) == \
        ("A", "example.org", 3, 60.0)       # DNS: retry 3, delay_before_retry = delay_loop
    (udp,) = vh.servers[("10.1.3.2", 53)].checks
    assert (udp.payload, udp.require_reply) == (b"\x01\x02\xab", b"\x01\x02")
    vh3 = cfg.health.services[key("10.0.3.3", 5000, Proto.UDP)]
    (bare,) = vh3.servers[("10.1.3.5", 5000)].checks
    assert bare.payload is None and bare.require_reply == b""
    assert any("tun_udp.conf:41: no protocol: UDP" in w for w in cfg.warnings)
    assert any("tun_udp.conf:28: mh-port ignored" in w for w in cfg.warnings)


def test_alpha_inhibit_misc_and_notify():
    cfg = load_keepalived(CORPUS / "alpha_inhibit.conf")
    vh = cfg.health.services[key("10.0.4.1", 80)]
    assert vh.alpha and vh.omega
    s2 = vh.servers[("10.1.4.2", 80)]
    assert s2.inhibit_on_failure and s2.checks[0].kind == "PING_CHECK" and s2.checks[0].alpha
    assert (s2.checks[0].delay_loop, s2.checks[0].retry, s2.checks[0].delay_before_retry,
            s2.checks[0].warmup) == (30.0, 2, 4.0, 5.0)
    s3 = vh.servers[("10.1.4.3", 80)]
    (misc,) = s3.checks
    assert (misc.misc_path, misc.misc_timeout, misc.misc_dynamic, misc.retry) == \
        ("/bin/sleep 30", 20.0, True, 2)
    assert (s3.notify_up, s3.notify_down, s3.inhibit_on_failure) == \
        ("/usr/local/bin/rs-up 10.1.4.3", "/usr/local/bin/rs-down", False)
    s5 = vh.servers[("10.1.4.5", 80)]
    assert [c.alpha for c in s5.checks] == [False, True]
    assert [c.connect_port for c in s5.checks] == [80, 81]
    svc = cfg.table.get(key("10.0.4.1", 80))
    assert {(d.addr, d.weight) for d in svc.dests} == {
        ("10.1.4.1", 3), ("10.1.4.2", 0), ("10.1.4.4", 6)}
    assert all(d.fwd is FwdMethod.NAT for d in svc.dests)


def test_quorum_and_sorry_servers():
    cfg = load_keepalived(CORPUS / "sorry_quorum.conf")
    h = cfg.health.services
    v1 = h[key("10.0.5.1", 80)]
    assert (v1.quorum, v1.hysteresis, v1.quorum_up, v1.quorum_down) == \
        (5, 1, "/usr/local/bin/vs-up 10.0.5.1", "/usr/local/bin/vs-down")
    assert (v1.sorry_server.addr, v1.sorry_server.port, v1.sorry_server.fwd,
            v1.sorry_server.inhibit) == ("10.1.5.100", 80, "dr", False)
    assert h[key("10.0.5.2", 80)].sorry_server.inhibit
    assert h[key("10.0.5.3", 8080)].quorum == 3
    assert h[key("10.0.5.3", 8080)].sorry_server.fwd == "nat"
    assert any("sorry_quorum.conf:38: quorum 10 exceeds" in w for w in cfg.warnings)
    # 10.0.5.5: below quorum at start, the inhibited live server stays at weight 0
    assert [(d.addr, d.weight) for d in cfg.table.get(key("10.0.5.5", 80)).dests] == \
        [("10.1.5.104", 1), ("10.1.5.6", 0)]
    # a virtual server without real servers is dropped, sorry server and all
    assert key("10.0.5.6", 80) not in cfg.table and key("10.0.5.6", 80) not in h
    assert any("sorry_quorum.conf:94: virtual server without real servers ignored" in w
               for w in cfg.warnings)


def test_globals_and_warnings():
    cfg = load_keepalived(CORPUS / "basic_nat.conf")
    assert cfg.globals["lvs_timeouts"] == {"tcp": 7200, "tcpfin": 60, "udp": 100}
    assert cfg.globals["script_user"] == "root" and cfg.globals["enable_script_security"]
    assert cfg.globals["router_id"] == "director1"
    assert cfg.table.timeouts == {"tcp": 7200, "tcpfin": 60, "udp": 100}
    inc = load_keepalived(CORPUS / "include_main.conf")
    assert inc.globals["lvs_flush"] is True
    main = str(CORPUS / "include_main.conf")
    assert f"{main}:11: vrrp_script ignored (VRRP stays with keepalived)" in inc.warnings
    assert f"{main}:15: vrrp_instance ignored (VRRP stays with keepalived)" in inc.warnings
    assert len(inc.warnings) == 2


def test_group_services_share_one_health_spec_per_real_server():
    cfg = load_keepalived(CORPUS / "groups.conf")
    probes = cfg.health.probes()
    tcp = [s for s in probes if s.connect_ip == "10.1.6.1"]
    # one TCP_CHECK on 10.1.6.1 port 80, however many group addresses name it
    assert len(tcp) == 1 and tcp[0].connect_port == 80
    assert len(probes[tcp[0]]) == 1 + 3 + 3 + 4


# -- bad input -----------------------------------------------------------------------------------
def write(tmp_path, text, name="k.conf"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


VS = "virtual_server 10.0.0.1 80 {\n  lb_kind DR\n  protocol TCP\n%s}\n"


@pytest.mark.parametrize("body,line,what", [
    ("virtual_server 10.0.0.1 80 {\n  lb_kind DR\n", 1, "never closed"),
    ("}\n", 1, "'}' without a matching '{'"),
    ("{\n}\n", 1, "'{' without a keyword"),
    ("virtual_server 10.0.0.256 80 {\n}\n", 1, "bad virtual server address '10.0.0.256'"),
    (VS % "  real_server banana 80 {\n  }\n", 4, "bad real server address 'banana'"),
    (VS % "  real_server 10.1.0.1 80 {\n    weight -1\n  }\n", 5, "weight -1"),
    (VS % "  real_server 10.1.0.1 80 {\n    weight x\n  }\n", 5, "weight x"),
    (VS % "  lb_kind FOO\n", 4, "lb_kind FOO: unknown forwarding method"),
    (VS % "  lvs_sched xyz\n", 4, "lvs_sched xyz: unknown scheduler"),
    (VS % "  persistence_timeout 0\n", 4, "persistence_timeout 0"),
    (VS % "  delay_loop soon\n", 4, "delay_loop soon"),
    (VS % "  real_server 10.1.0.1 80 {\n    uthreshold 5\n    lthreshold 9\n  }\n", 4,
     "real server 10.1.0.1 80"),
    (VS % "  real_server 10.1.0.1 80 {\n    HTTP_GET {\n      url {\n      }\n    }\n  }\n",
     6, "url needs a path"),
    (VS % "  real_server 10.1.0.1 80 {\n    MISC_CHECK {\n    }\n  }\n", 5,
     "MISC_CHECK needs misc_path"),
    (VS % '  quorum_up "/bin/x\n', 4, "unterminated quote"),
    (VS % "  real_server 10.1.0.1 80\n", 4, "real_server needs a { } block"),
    ("virtual_server_group g {\n  10.0.6.254-10.0.7.1 80\n}\n", 2, "crosses a /24"),
    ("virtual_server_group g {\n  10.0.6.9-3 80\n}\n", 2, "not above its start"),
    ("virtual_server_group g {\n  10.0.6.1/24 80\n}\n", 2, "host bits"),
])
def test_bad_input_is_one_error_naming_file_and_line(tmp_path, body, line, what):
    p = write(tmp_path, body)
    with pytest.raises(KeepalivedError) as e:
        load_keepalived(p)
    assert str(e.value).startswith(f"{p}:{line}: "), str(e.value)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_unknown_keywords_are_warnings(tmp_path):
    p = write(tmp_path, "bogus_top 1\nbogus_two 2\n\n" + VS % (
        "  frobnicate yes\n  real_server 10.1.0.1 80 {\n    SMTP_CHECK {\n    }\n  }\n"))
    cfg = load_keepalived(p)
    assert cfg.warnings == [
        f"{p}:1: bogus_top ignored (not read by fastlvs)",
        f"{p}:2: bogus_two ignored (not read by fastlvs)",
        f"{p}:7: frobnicate ignored (not read by fastlvs)",
        f"{p}:9: SMTP_CHECK ignored (this checker is not supported by fastlvs)",
        f"{p}:4: no lvs_sched: wlc, as keepalived defaults to"]
    assert [d.addr for d in cfg.table.get(key("10.0.0.1", 80)).dests] == ["10.1.0.1"]


def test_include_loop_is_refused(tmp_path):
    write(tmp_path, "include b.conf\n", "a.conf")
    write(tmp_path, "include a.conf\n", "b.conf")
    with pytest.raises(KeepalivedError) as e:
        load_keepalived(tmp_path / "a.conf")
    assert str(e.value) == (f"{tmp_path / 'b.conf'}:1: include a.conf: include loop "
                            f"({tmp_path / 'a.conf'} is already being read)")
    write(tmp_path, "include *.conf\n", "own/self.conf")
    with pytest.raises(KeepalivedError, match=r"self.conf:1: include \*.conf: include loop"):
        load_keepalived(tmp_path / "own" / "self.conf")


def test_missing_include_file_is_an_error_and_an_empty_glob_is_not(tmp_path):
    p = write(tmp_path, "include nothere.conf\n")
    with pytest.raises(KeepalivedError) as e:
        load_keepalived(p)
    assert str(e.value) == f"{p}:1: include nothere.conf: no such file"
    p = write(tmp_path, "include none/*.conf\n" + VS % "  real_server 10.1.0.1 80 {\n  }\n")
    assert len(load_keepalived(p).table) == 1


def test_include_is_relative_to_the_including_file(tmp_path):
    write(tmp_path, "include sub/*.conf\n", "top.conf")
    write(tmp_path, VS % "  include rs/*.rs\n", "sub/vs.conf")
    write(tmp_path, "real_server 10.1.0.7 80 {\n  weight 9\n}\n", "sub/rs/a.rs")
    cfg = load_keepalived(tmp_path / "top.conf")
    (d,) = cfg.table.get(key("10.0.0.1", 80)).dests
    assert (d.addr, d.weight, d.fwd) == ("10.1.0.7", 9, FwdMethod.DR)


def test_defaults_nat_wlc_weight_one(tmp_path):
    p = write(tmp_path, "virtual_server 10.0.0.1 80 {\n protocol TCP\n"
                        " real_server 10.1.0.1 {\n }\n}\n")
    cfg = load_keepalived(p)
    svc = cfg.table.get(key("10.0.0.1", 80))
    assert svc.sched_name == "wlc" and not svc.persistent
    assert [(d.addr, d.port, d.fwd, d.weight) for d in svc.dests] == \
        [("10.1.0.1", 80, FwdMethod.NAT, 1)]
    assert any("no lb_kind: NAT" in w for w in cfg.warnings)
    assert any("no lvs_sched: wlc" in w for w in cfg.warnings)


def test_mangled_corpus_files_give_a_config_or_one_error_line(tmp_path):
    """Bad input never escapes as anything but KeepalivedError: corpus files with words
    replaced, dropped or inserted (seeded, bounded) either load or raise one line."""
    import random
    rnd = random.Random(7)
    junk = ["{", "}", "0", "-1", "65536", "99999999999", "x", '"', "1.2.3", "::", "10.0.0.1-0",
            "10.0.0.0/33", "TUN", "type", "gue", "alpha", "weight", "real_server", "include",
            "*", "sh-port", "ops", "persistence_granularity", "ff", "\\", "!", "#", "nan", "-"]
    loaded = refused = 0
    for i in range(400):
        name = rnd.choice(CONFS)
        words = (CORPUS / f"{name}.conf").read_text().split(" ")
        for _ in range(rnd.randint(1, 4)):
            j = rnd.randrange(len(words))
            op = rnd.random()
            if op < 0.4:
                words[j] = rnd.choice(junk)
            elif op < 0.7:
                del words[j]
            else:
                words.insert(j, rnd.choice(junk))
        p = write(tmp_path, " ".join(words), f"m{i}.conf")
        try:
            load_keepalived(p)
            loaded += 1
        except KeepalivedError as e:
            assert str(e).startswith(str(tmp_path)) and "\n" not in str(e), str(e)
            refused += 1
    assert loaded and refused


def test_udp_check_wildcards_and_reply_lengths(tmp_path):
    conf = tmp_path / "udp.conf"
    conf.write_text("""virtual_server 10.0.9.1 53 {
    protocol UDP
    real_server 10.1.9.1 53 {
        UDP_CHECK {
            require_reply 01xX 2x
            min_reply_length 4
            max_reply_length 512
        }
    }
}
""")
    (spec,) = load_keepalived(conf).health.services[key("10.0.9.1", 53, Proto.UDP)] \
        .servers[("10.1.9.1", 53)].checks
    assert spec.require_reply == b"\x01\x00\x20"
    assert spec.reply_mask == b"\x00\xff\x0f"      # the x digits are not compared
    assert (spec.min_reply_length, spec.max_reply_length) == (4, 512)
    conf.write_text(conf.read_text().replace("require_reply 01xX 2x", "payload 0x"))
    with pytest.raises(KeepalivedError, match=r"udp.conf:5: payload: wildcard digits"):
        load_keepalived(conf)


def test_virtual_server_fwmark_is_a_mark_service(tmp_path):
    p = write(tmp_path, "virtual_server fwmark 7 {\n  lb_algo rr\n  lb_kind DR\n"
                        "  protocol UDP\n  persistence_timeout 60\n"
                        "  real_server 10.1.0.1 53 {\n  }\n  real_server 10.1.0.2 0 {\n  }\n}\n")
    cfg = load_keepalived(p)
    assert cfg.warnings == []
    svc = cfg.table.get(ServiceKey(Proto.FWM, "0.0.0.0", 7))
    assert (svc.sched_name, svc.timeout) == ("rr", 60)
    # DR real servers of a mark get its port, 0 (the client's is kept), whatever they say,
    # as keepalived 2.2.7 installs them (fwmark6.conf's recording); NAT ones keep theirs
    assert sorted((d.addr, d.port, d.fwd) for d in svc.dests) == [
        ("10.1.0.1", 0, FwdMethod.DR), ("10.1.0.2", 0, FwdMethod.DR)]
    assert format_list(cfg.table).splitlines()[3:] == [
        "FWM  7 rr persistent 60",
        "  -> 10.1.0.1:0                   Route   1      0          0         ",
        "  -> 10.1.0.2:0                   Route   1      0          0         "]


@pytest.mark.parametrize("mark", ["0", "4294967296", "x"])
def test_virtual_server_fwmark_out_of_range_is_an_error(tmp_path, mark):
    p = write(tmp_path, f"virtual_server fwmark {mark} {{\n}}\n")
    with pytest.raises(KeepalivedError, match=f"{p}:1: virtual_server fwmark {mark}: not a mark"):
        load_keepalived(p)
