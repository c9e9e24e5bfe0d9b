"""What the status says about the broker link under faults (docs/design-notes.md:
`last_error` holds the host's own failure first, a link error clears when the link
recovers): a broker that restarts again and again is not a UID conflict, and a host that
joins while the broker is away keeps saying so.
"""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.conftest import Site


def test_a_broker_restarting_again_and_again_is_not_a_uid_conflict(fault_site: Any) -> None:
    s: Site = fault_site(no_assignment=True, config={"mqtt": {"max_backoff_s": 1}})

    def online_after(session: int) -> list[dict[str, Any]]:
        return [
            m for m in s.cmd.availability() if m.get("state") == "online" and m["session"] > session
        ]

    session = s.cmd.wait_for(lambda: online_after(0), 15)[-1]["session"]
    for _ in range(3):
        s.broker.kill()
        time.sleep(1.2)  # long enough for a refused reconnect (backoff cap 1 s)
        s.broker.restart()
        back = s.cmd.wait_for(lambda after=session: online_after(after), 10)
        assert back, s.host.output()[-1500:]
        session = back[-1]["session"]
        time.sleep(0.3)
    time.sleep(0.5)
    codes = {(st.get("last_error") or {}).get("code") for st in s.cmd.statuses()}
    assert "broker_unreachable" in codes, codes
    assert "uid_conflict" not in codes, s.host.output()[-1500:]


def test_joining_while_the_broker_is_down_keeps_saying_so(fault_site: Any) -> None:
    s: Site = fault_site(broker_up=False)
    st = s.host.wait_phase("joined", 40)
    time.sleep(1.0)
    st = s.host.status()
    assert (st.get("last_error") or {}).get("code") == "broker_unreachable", st
