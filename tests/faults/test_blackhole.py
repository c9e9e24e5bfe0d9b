"""A path to the broker that goes silently dead (docs/api/asyncapi.yaml): no RST, no FIN, bytes simply
vanish both ways, as when a NAT or VPN forgets the connection. Only keepalives can tell.

The agent reaches Mosquitto through `devtools.broker.TcpProxy`; a commander connected to the
broker directly plays the controller. With `keepalive_s: 2`: the broker gives up on the
silent agent and publishes its will (`offline`, this session) once 1.5 keepalives pass
(Mosquitto 2.0 looks only every 6 s, hence a generous wait); the agent notices the dead link
itself (its `mqtt.lost` log line) within about two keepalives (paho sends a PINGREQ after one
keepalive without traffic and gives up one keepalive later); once the path is back it is
online again within its backoff cap, with a higher session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from devtools.broker import TcpProxy
from tests.e2e.conftest import Site

KEEPALIVE_S = 2


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(1)  # pointed at the broker once the site exists
    yield p
    p.stop()


def _availability(site: Site, state: str, since: float = 0.0) -> list[dict[str, Any]]:
    return [
        r.json()
        for r in site.cmd.records("availability")
        if r.ts >= since and r.json().get("state") == state
    ]


def _log_times(site: Site, event: str, since: float) -> list[float]:
    out = []
    for line in site.host.output().splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            rec = json.loads(line)
            ts = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            continue
        if rec.get("event") == event and ts >= since:
            out.append(ts)
    return out


def test_a_blackholed_path_is_noticed_the_will_fires_and_the_agent_comes_back(
    fault_site: Any, proxy: TcpProxy
) -> None:
    s: Site = fault_site(start=False, config={"mqtt": {"keepalive_s": KEEPALIVE_S}})
    proxy.target = ("127.0.0.1", s.broker.port)
    proxy.start()
    s.host.config["mqtt"]["url"] = f"mqtt://127.0.0.1:{proxy.port}"
    s.host.write_config()
    s.start()
    s.host.wait_phase("joined", 40)
    online = s.cmd.wait_for(lambda: _availability(s, "online"), 10)
    assert online and proxy.connections == 1
    session = online[-1]["session"]

    dark = time.time()
    proxy.blackhole()
    # The agent hears nothing, and says so within about two keepalives. paho sends a PINGREQ
    # once a keepalive passes without traffic and gives up a keepalive later; aiomqtt runs
    # that check once a second (typically ~1.5 keepalives here; slack for a loaded machine).
    lost = s.cmd.wait_for(lambda: _log_times(s, "mqtt.lost", dark), 4 * KEEPALIVE_S)
    assert lost, f"the agent never noticed the dead link\n{s.host.output()[-2000:]}"
    assert lost[0] - dark <= 2 * KEEPALIVE_S + 2.0, f"noticed after {lost[0] - dark:.1f}s"
    # The broker hears nothing from the agent either: the will, for this session. Mosquitto
    # 2.0 checks keepalives every 6 s, so it comes 1.5 keepalives to ~9 s after the last byte.
    will = s.cmd.wait_for(lambda: _availability(s, "offline", dark), 1.5 * KEEPALIVE_S + 8)
    assert will, "no will while the path was dark"
    assert will[-1]["session"] == session
    # The agent's reconnects meanwhile are swallowed by the dead path too.
    assert not _availability(s, "online", dark)

    back = time.time()
    proxy.restore()
    again = s.cmd.wait_for(lambda: _availability(s, "online", back), 12)
    assert again, f"not online again after the path came back\n{s.host.output()[-2000:]}"
    assert again[-1]["session"] > session
    # Within its backoff cap (1 s), plus a connect attempt that was in flight on the dead
    # path (bounded by 2 keepalives) when it came back.
    assert time.time() - back <= 1 + 2 * KEEPALIVE_S + 2
    # And it works: a command sent through the broker is answered.
    assert s.run("ping", timeout=10)["state"] == "succeeded"
