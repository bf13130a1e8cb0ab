"""The console: the frameworks' start-up chatter held back, what concerns the user kept (`ablation.console`)."""

from __future__ import annotations

import os

from ablation import console


def test_a_frameworks_start_up_notes_are_dropped_and_its_warnings_kept(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE, raising=False)
    with console.framework_start():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796592476.047783   25194 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796592476.047783   25194 cuda_platform.cc:52] failed call to cuInit\n")
        os.write(2, b"UserWarning: something the user should see\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "absl::InitializeLog" not in err
    assert "failed call to cuInit" in err and "UserWarning: something the user should see" in err

    monkeypatch.setenv(console.VERBOSE, "1")  # hydra.verbose: everything
    with console.framework_start():
        os.write(2, b"I0000 00:00:1796592476.047783   25194 port.cc:153] oneDNN custom operations are on.\n")
    assert "oneDNN" in capfd.readouterr().err
