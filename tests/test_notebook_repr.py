"""The notebook cards of servers and collectors, from plain values."""

from __future__ import annotations

import re

import evkit
from evkit._notebook_repr import card_html, collector_html, server_html

STATS = {
    "clients": 3,
    "published": 1200,
    "delivered": 3600,
    "pending": 0,
    "dropped": 2,
    "slow_consumer_disconnects": 1,
    "last_id": "1200",
    "epoch": "e1",
}


def cells(card: str) -> dict[str, str]:
    return dict(re.findall(r"<th[^>]*>([^<]*)</th><td[^>]*>(.*?)</td>", card))


def test_a_running_server_shows_its_urls_clients_and_counts() -> None:
    card = server_html("ws://127.0.0.1:4000/ws/events", True, STATS)
    shown = cells(card)
    assert "evkit Server" in card
    assert ">running</span>" in card
    assert shown["stream"] == "ws://127.0.0.1:4000/ws/events"
    assert shown["dashboard"] == (
        "<a href='http://127.0.0.1:4000/' target='_blank'>http://127.0.0.1:4000/</a>"
    )
    assert (shown["clients"], shown["published"], shown["delivered"]) == ("3", "1,200", "3,600")
    assert shown["dropped (queue full)"] == "2"
    assert shown["last id"] == "1200"


def test_rates_are_measured_between_two_displays() -> None:
    url = "ws://127.0.0.1:4001/ws/events"
    first = cells(server_html(url, True, STATS))
    later = cells(server_html(url, True, {**STATS, "published": 1300, "delivered": 3900}))
    assert first["published"] == "1,200"
    assert re.fullmatch(r"1,300 \([\d,.]+/s since last shown\)", later["published"])
    assert re.fullmatch(r"3,900 \([\d,.]+/s since last shown\)", later["delivered"])


def test_a_stopped_server_shows_its_state_only() -> None:
    card = server_html("wss://events.example.com/ws/events", False, {})
    assert ">stopped</span>" in card
    assert cells(card)["dashboard"].startswith("<a href='https://events.example.com/'")
    assert "clients" not in cells(card)


def test_every_value_is_escaped() -> None:
    card = card_html("<b>", "odd<state>", [("<k>", "<script>alert(1)</script>")])
    assert "<script>" not in card
    assert "&lt;script&gt;" in card
    assert "odd&lt;state&gt;" in card


def test_collector_card_and_the_collectors_own_repr() -> None:
    stats = {"state": "running", "held": 10, "received": 12, "rate": 2.5, "dropped": 2}
    shown = cells(collector_html("in-process bus", ["repo.*"], None, 100, stats))
    assert shown["events held"] == "10 of at most 100"
    assert (shown["correlation"], shown["rate"], shown["reconnects"]) == ("all", "2.5 /s", "0")
    with evkit.capture(["repo.*"], buffer_size=50) as cap:
        evkit.emit("repo.commit.created", {})
        assert cells(cap._repr_html_())["events held"] == "1 of at most 50"


def test_a_servers_own_repr_is_its_card() -> None:
    with evkit.serve(port=0) as srv:
        shown = cells(srv._repr_html_())
        assert shown["stream"] == srv.url
        assert shown["clients"] == "0"
    assert ">stopped</span>" in srv._repr_html_()
