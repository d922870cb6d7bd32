"""Discovery's pure logic: the settings, the schedule, the listing and the warm-up."""

from __future__ import annotations

import json
import logging
import random
import time

import pytest

from replica_router.conf import parse_settings
from replica_router.discovery.discoverer import Discoverer
from replica_router.discovery.sources import (
    Answer,
    CallableSource,
    DiscoveryFailed,
    Member,
    PatroniSource,
)
from replica_router.discovery.topology import Listing, Topology


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A source that gives the answers (or raises the errors) it is handed."""

    kind = "dns"

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.asked = 0

    def resolve(self) -> Answer:
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


R1 = Member("10.0.0.1", 5432, "r1")
R2 = Member("10.0.0.2", 5432, "r2")


def discoverer(source: Scripted, clock: Clock, *, jitter: float = 0.0) -> Discoverer:
    return Discoverer(
        source, refresh=60.0, jitter=jitter, monotonic=clock, clock=clock, rng=random.Random(7)
    )


def test_the_source_is_asked_every_refresh_and_never_sooner_than_the_ttl():
    clock = Clock()
    source = Scripted(Answer((R1,), ttl=300.0), Answer((R1,), ttl=5.0))
    found = discoverer(source, clock)
    assert found.refresh() is True
    clock.now += 299
    assert found.refresh() is False and source.asked == 1  # the TTL is not over
    clock.now += 1
    found.refresh()
    assert source.asked == 2
    clock.now += 59.9
    found.refresh()
    assert source.asked == 2  # a short TTL does not shorten REFRESH_SECONDS
    clock.now += 0.1
    found.refresh()
    assert source.asked == 3


def test_the_jitter_only_lengthens_the_wait():
    clock = Clock()
    source = Scripted(Answer((R1,), ttl=None))
    found = discoverer(source, clock, jitter=10.0)
    waits = []
    for _ in range(50):
        start = clock.now
        found.refresh()
        asked = source.asked
        while source.asked == asked:
            clock.now += 0.25
            found.refresh()
        waits.append(clock.now - start)
    assert min(waits) >= 60 and max(waits) <= 70.25
    assert max(waits) - min(waits) > 5  # spread, not constant


def test_a_failed_or_empty_answer_keeps_the_last_list_and_is_logged_once(caplog):
    clock = Clock()
    source = Scripted(
        Answer((R1, R2), None),
        DiscoveryFailed("timed out"),
        Answer((), None),
        DiscoveryFailed("timed out"),
        Answer((R2,), None),
    )
    found = discoverer(source, clock)
    with caplog.at_level(logging.WARNING, logger="replica_router"):
        found.refresh()
        for _ in range(3):
            clock.now += 60
            assert found.refresh() is False
            assert found.found.members == (R1, R2)
            assert found.found.error is not None
        clock.now += 60
        assert found.refresh() is True
    assert found.found.members == (R2,) and found.found.error is None
    messages = [record.getMessage() for record in caplog.records]
    assert sum("discovery failed" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


def test_a_callable_may_return_urls_pairs_and_host_port_strings():
    source = CallableSource(
        lambda: [
            "postgresql://app:s3cret@10.0.0.1:6432/app",
            ("10.0.0.2", 5433),
            "db3.internal:5434",
            "host=db4 port=5435",
            "db5",
        ]
    )
    assert [(m.host, m.port) for m in source.resolve().members] == [
        ("10.0.0.1", 6432),
        ("10.0.0.2", 5433),
        ("db3.internal", 5434),
        ("db4", 5435),
        ("db5", None),
    ]


def test_a_callable_that_raises_or_returns_garbage_fails_without_echoing_a_password():
    with pytest.raises(DiscoveryFailed, match="boom"):
        CallableSource(lambda: (_ for _ in ()).throw(RuntimeError("boom"))).resolve()
    with pytest.raises(DiscoveryFailed) as failed:
        CallableSource(lambda: ["postgresql://u:s3cret@[oops"]).resolve()
    assert "s3cret" not in str(failed.value)
    with pytest.raises(DiscoveryFailed):
        CallableSource(lambda: [42]).resolve()


def test_the_first_list_serves_at_once_and_later_joiners_warm_up_then_leave_and_drain():
    from replica_router.discovery.discoverer import Found

    listing = Listing("dns")
    first = listing.follow(
        Found((R1,), 1.0, 1.0, None), default_port="5432", static=set(), now=100.0
    )
    assert first.joined["10.0.0.1:5432"].joined_at == 0.0
    later = first.follow(
        Found((R1, R2), 2.0, 2.0, None), default_port="5432", static=set(), now=200.0
    )
    assert later.joined["10.0.0.2:5432"].joined_at == 200.0
    gone = later.follow(Found((R2,), 3.0, 3.0, None), default_port="5432", static=set(), now=300.0)
    assert set(gone.joined) == {"10.0.0.2:5432"} and gone.removed == {"10.0.0.1:5432": 300.0}
    back = gone.follow(
        Found((R1, R2), 4.0, 4.0, None), default_port="5432", static=set(), now=400.0
    )
    assert back.removed == {}


def test_a_member_that_is_already_a_node_of_the_settings_is_not_added_again():
    from replica_router.discovery.discoverer import Found

    listing = Listing("dns").follow(
        Found((R1, R2), 1.0, 1.0, None),
        default_port="5432",
        static={("10.0.0.1", "5432")},
        now=1.0,
    )
    assert set(listing.joined) == {"10.0.0.2:5432"}


def test_a_warming_replica_ramps_from_a_tenth_of_its_share_to_all_of_it():
    from replica_router.discovery.topology import Joined

    topology = Topology(
        static={"replica_1": 1},
        primary="default",
        template="default",
        weight=1,
        warmup=30.0,
        drain=120.0,
        source="dns",
    )
    topology.listing = Listing(
        "dns", joined={"10.0.0.2:5432": Joined("10.0.0.2", 5432, "r2", 100.0)}
    )
    serving = {"replica_1": 1, "10.0.0.2:5432": 1}
    assert topology.rotation_weights(serving, 100.0) == {"replica_1": 10, "10.0.0.2:5432": 1}
    assert topology.rotation_weights(serving, 115.0) == {"replica_1": 10, "10.0.0.2:5432": 6}
    assert topology.rotation_weights(serving, 130.0) == serving
    assert topology.listing.as_json() == Listing.from_json(topology.listing.as_json()).as_json()


@pytest.mark.parametrize(
    ("discovery", "fragment"),
    [
        ({"SOURCE": "dnz"}, "SOURCE"),
        ({"SOURCE": "dns"}, "NAME"),
        ({"SOURCE": "callable"}, "CALLABLE"),
        ({"SOURCE": "dns", "NAME": "x", "RECORD": "MX"}, "RECORD"),
        ({"SOURCE": "dns", "NAME": "x", "NAMESERVERS": "10.0.0.2"}, "NAMESERVERS"),
        ({"SOURCE": "dns", "NAME": "x", "NAMESERVERS": ["10.0.0.2:99999"]}, "NAMESERVERS"),
        ({"SOURCE": "dns", "NAME": "x", "REFRESH_SECONDS": 0}, "REFRESH_SECONDS"),
        ({"SOURCE": "dns", "NAME": "x", "WEIGHT": 0}, "WEIGHT"),
        ({"SOURCE": "dns", "NAME": "x", "PORT": "5432"}, "PORT"),
        ({"SOURCE": "dns", "NAME": "x", "TEMPLATE": ""}, "TEMPLATE"),
        ({"SOURCE": "dns", "NAME": "x", "REFRESH": 5}, "unknown key"),
        ({"SOURCE": "patroni"}, "URLS"),
        ({"SOURCE": "patroni", "URLS": ["10.0.0.1:8008"]}, "URLS"),
        ({"SOURCE": "patroni", "URLS": ["http://admin:secret@10.0.0.1:8008"]}, "URLS"),
        ({"SOURCE": "patroni", "URLS": [8008]}, "URLS"),
        ("dns", "None or a dict"),
    ],
)
def test_bad_discovery_settings_are_e012_with_a_hint(discovery, fragment):
    _, problems = parse_settings({"DISCOVERY": discovery})
    assert [p.id for p in problems] == ["replica_router.E012"]
    assert fragment in problems[0].message and problems[0].hint
    assert "secret" not in problems[0].message + problems[0].hint


def test_nameservers_take_an_optional_port_and_ipv6_in_brackets():
    config, problems = parse_settings(
        {
            "DISCOVERY": {
                "SOURCE": "dns",
                "NAME": "x",
                "NAMESERVERS": ["10.0.0.2", "127.0.0.1:5353", "[::1]:53", "::1"],
                "JITTER_SECONDS": 0,
            }
        }
    )
    assert problems == []
    assert config.discovery is not None
    assert config.discovery.nameservers == (
        ("10.0.0.2", 53),
        ("127.0.0.1", 5353),
        ("::1", 53),
        ("::1", 53),
    )
    assert config.discovery.jitter_seconds == 0.0


def test_the_command_says_where_the_list_comes_from_when_it_changed_and_if_it_fails():
    from replica_router.health.model import Discovered
    from replica_router.management.commands.replica_health import Command

    changed = 1_800_000_000.0
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(changed))
    answering = Discovered("dns", 2, changed, changed + 5, None)
    failing = Discovered("dns", 2, changed, changed, "SERVFAIL")
    assert (
        Command._discovery_line(answering) == f"discovery: dns, 2 replicas listed (changed {when})"
    )
    assert Command._discovery_line(failing) == (
        f"discovery: dns is failing (SERVFAIL); 2 replicas listed (changed {when}) kept"
    )
    never = Discovered("callable", 0, None, None, "timed out")
    assert (
        Command._discovery_line(never)
        == "discovery: callable is failing (timed out); 0 replicas listed kept"
    )


# -- Patroni's GET /cluster, served by a stand-in for one member's REST API ----------


class PatroniApi:
    """An HTTP server on loopback that answers GET /cluster with ``document``
    (a dict, raw bytes, or an int status); the parsing is what is tested here,
    the real Patroni is in tests/integration/test_patroni.py."""

    def __init__(self) -> None:
        import http.server
        import threading

        api = self
        self.document: object = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                doc = api.document
                if isinstance(doc, int):
                    self.send_error(doc)
                    return
                body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def patroni_api():
    api = PatroniApi()
    yield api
    api.close()


def member(name, role, state="running", port=5432, **extra):
    return {"name": name, "role": role, "state": state, "host": "10.0.0.9", "port": port, **extra}


def test_patroni_lists_its_running_replicas_but_not_the_leader_or_the_others(patroni_api):
    patroni_api.document = {
        "scope": "main",
        "members": [
            member("n0", "leader", port=5430),
            member("n1", "replica", "streaming", port=5431),
            member("n2", "sync_standby", port=5432),
            member("n3", "replica", "starting", port=5433),
            member("n4", "replica", "stopped", port=5434),
            member("n5", "replica", port=5435, tags={"noloadbalance": True}),
            member("n6", "replica", "running", port=5436, tags={"nofailover": True}),
        ],
    }
    answer = PatroniSource([patroni_api.url], timeout=2).resolve()
    assert answer == Answer(
        (
            Member("10.0.0.9", 5431, "n1"),
            Member("10.0.0.9", 5432, "n2"),
            Member("10.0.0.9", 5436, "n6"),
        ),
        None,
    )


def test_patroni_asks_each_url_until_one_answers(patroni_api):
    patroni_api.document = {"members": [member("n1", "replica")]}
    unused = PatroniApi()
    unused.close()  # a member whose API is down: connection refused
    answer = PatroniSource([unused.url, patroni_api.url], timeout=2).resolve()
    assert [m.name for m in answer.members] == ["n1"]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (503, "HTTP 503"),
        (b"<html>not json</html>", "not a Patroni /cluster document"),
        ({"members": "n1"}, "not a Patroni /cluster document"),
        ({"leader": "n0"}, "not a Patroni /cluster document"),
        ({"members": [{"role": "replica", "state": "running"}]}, "not a Patroni /cluster document"),
    ],
)
def test_patroni_answers_that_are_not_a_cluster_fail_with_the_reason(patroni_api, document, reason):
    patroni_api.document = document
    with pytest.raises(DiscoveryFailed, match=reason) as failed:
        PatroniSource([patroni_api.url], timeout=2).resolve()
    assert patroni_api.url in str(failed.value)


def test_patroni_urls_are_parsed_without_their_trailing_slash():
    config, problems = parse_settings(
        {"DISCOVERY": {"SOURCE": "patroni", "URLS": ["http://10.0.0.1:8008/", "https://b:8008"]}}
    )
    assert problems == []
    assert config.discovery is not None
    assert config.discovery.urls == ("http://10.0.0.1:8008", "https://b:8008")
