"""Tests of the host adapters: systemd, host files, processes."""
