"""A hostile or broken controller costs the agent a logged error, never its life or memory.

Each test points a real agent at the devtools controller serving one kind of hostile reply
(deeply nested JSON in a 200 and in a 503, a gzip bomb, stacked encodings) and checks that
the agent stays up, reports a `controller_unreachable`-class error, keeps its peak RSS
(VmHWM, from /proc) within 60 MB of what it was before, and recovers once the controller
behaves again.
"""

from __future__ import annotations

import functools
import gzip
import time
import zlib
from pathlib import Path

from agent.testing import sample_assignment
from tests.e2e.conftest import Site, SiteFactory

RSS_HEADROOM_KB = 60 * 1024


@functools.cache
def _zeros_gzipped() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(256)) + packer.flush()


def _vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _started(site_factory: SiteFactory) -> tuple[Site, int]:
    """A site whose agent has registered and joined; returns it with the agent's pid."""
    site = site_factory()
    site.host.wait_phase("joined", 30)
    assert site.host.proc is not None
    return site, site.host.proc.pid


def _errors(site: Site) -> list[dict[str, object]]:
    codes = ("controller_unreachable", "bad_assignment")
    return [e for e in site.cmd.events() if e.get("code") in codes]


def _survives(site: Site, pid: int, polls_before: int, hwm_before: int) -> str:
    """Wait for the hostile replies to be fetched and the agent to poll again; return the
    text of the controller error it reported."""
    path = f"/v1/hosts/{site.uid}/assignment"
    assert site.controller.wait_count("GET", path, polls_before + 3, timeout=30), "no more polls"
    assert site.host.proc is not None and site.host.proc.poll() is None, site.host.output()[-3000:]
    errors = site.cmd.wait_for(lambda: _errors(site), 15)
    assert errors, "no controller_unreachable event\n" + site.host.output()[-3000:]
    grown = _vm_kb(pid, "VmHWM") - hwm_before
    assert grown < RSS_HEADROOM_KB, f"peak RSS grew by {grown} KiB"
    # Behaving again (with a new revision, so the agent fetches it in full): the error
    # clears and commands still work.
    site.controller.set_assignment(site.uid, sample_assignment(revision=2))
    site.wait_status(lambda st: st.get("last_error") is None, 30)
    assert site.run("ping")["state"] == "succeeded"
    return str(errors[-1].get("message"))


def test_deeply_nested_json_in_a_200_and_a_503_is_an_error_not_a_crash(
    site_factory: SiteFactory,
) -> None:
    site, pid = _started(site_factory)
    path = f"/v1/hosts/{site.uid}/assignment"
    before = site.controller.count("GET", path)
    hwm = _vm_kb(pid, "VmHWM")
    nested = b"[" * 5000
    ctype = {"Content-Type": "application/json"}
    site.controller.serve_raw_next(1, 503, nested, ctype, path_prefix=path)
    site.controller.serve_raw_next(1, 503, b'{"error": ' * 3000, ctype, path_prefix=path)
    site.controller.serve_raw_next(1, 200, nested, ctype, path_prefix=path)
    _survives(site, pid, before, hwm)


def test_a_gzip_bomb_is_cut_off_at_the_reply_limit(site_factory: SiteFactory) -> None:
    site, pid = _started(site_factory)
    path = f"/v1/hosts/{site.uid}/assignment"
    before = site.controller.count("GET", path)
    hwm = _vm_kb(pid, "VmHWM")
    # 256 MiB of zeros in 256 KiB of gzip: a 1 MiB reply limit checked after decompression
    # sees it only once it is all in memory.
    bomb = _zeros_gzipped()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    site.controller.serve_raw_next(2, 200, bomb, headers, path_prefix=path)
    message = _survives(site, pid, before, hwm)
    assert "too large" in message, message


def test_stacked_encodings_are_refused(site_factory: SiteFactory) -> None:
    site, pid = _started(site_factory)
    path = f"/v1/hosts/{site.uid}/assignment"
    before = site.controller.count("GET", path)
    hwm = _vm_kb(pid, "VmHWM")
    # A bomb of the kind, smaller: gzip of gzip of 256 MiB of zeros, about 1 KB.
    twice = gzip.compress(_zeros_gzipped(), 9)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"}
    site.controller.serve_raw_next(2, 200, twice, headers, path_prefix=path)
    t0 = time.monotonic()
    message = _survives(site, pid, before, hwm)
    assert "encoding" in message, message
    assert time.monotonic() - t0 < 60
