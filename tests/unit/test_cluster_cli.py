"""The cluster's command line where it needs no server: its commands, --dir, errors.

Makefiles, CI scripts and people call ``python -m replica_router.testing.cluster``;
a subcommand that disappears, a ``--dir`` that is ignored in one position, or an
error that turns into a traceback breaks them.
"""

from __future__ import annotations

import pytest

from replica_router.testing.cluster import main

COMMANDS = (
    "{up,down,status,env,pause,resume,kill,freeze,thaw,start,promote,rebuild,conflicts,"
    "delay,stop-primary,run}"
)


def test_every_subcommand_is_offered(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert COMMANDS in capsys.readouterr().out


@pytest.mark.parametrize("dir_first", [True, False], ids=["dir-first", "dir-last"])
def test_dir_is_honoured_before_or_after_the_subcommand(tmp_path, capsys, dir_first):
    # No cluster there: the error names the directory given, wherever --dir stood.
    argv = ["--dir", str(tmp_path), "env"] if dir_first else ["env", "--dir", str(tmp_path)]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"error: No cluster in {tmp_path}: run 'up' first.\n"


@pytest.mark.parametrize(
    "command", [["pause", "replica_1"], ["kill", "replica_1"], ["delay", "replica_1", "2"]]
)
def test_a_command_without_a_cluster_fails_with_one_line(tmp_path, capsys, command):
    assert main([*command, "--dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: No cluster in {tmp_path}: run 'up' first.\n"


@pytest.mark.parametrize("rest", [[], ["--"]])
def test_run_without_a_command_starts_nothing(tmp_path, capsys, rest):
    assert main(["run", "--dir", str(tmp_path), *rest]) == 2
    assert capsys.readouterr().err == "error: run needs a command after --\n"
    assert list(tmp_path.iterdir()) == []
