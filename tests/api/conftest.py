"""The e2e site fixtures, for the tests that check an agent's real traffic against docs/api."""

from tests.e2e.conftest import _stop_leftover_agents, site, site_factory

__all__ = ["_stop_leftover_agents", "site", "site_factory"]
