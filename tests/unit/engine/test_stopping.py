"""stop_on_signals: SIGINT / SIGTERM ask a run to stop instead of killing it; handlers come back.
hold_stop_signals: a torchrun process's SIGTERM outside training waits until the error is told."""

import contextlib
import os
import signal
import threading

import pytest

from fastmaml import cli
from fastmaml.engine.distributed import Cluster
from fastmaml.engine.stopping import HELD_SIGNALS, StopRequest, hold_stop_signals, stop_now, stop_on_signals, stopped


def test_a_signal_sets_the_request_and_the_process_goes_on():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals(announce=False) as request:
        assert not request.requested and not stop_now(request, Cluster(), due=False)
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signal is signal.SIGTERM
        assert stop_now(request, Cluster(), due=False)  # one process: at once, not only at log iterations
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
        assert request.signal is signal.SIGTERM
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN under `nohup ... &`
    with pytest.raises(KeyboardInterrupt), stop_on_signals(announce=False) as request:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.signal is signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes; it must have raised by now
            pass
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def body():
        with stop_on_signals(announce=False) as request:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = request.requested

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"handler": before, "requested": False}


def test_the_error_says_where_it_stopped_and_how_to_go_on():
    request = StopRequest()
    request.signal = signal.SIGINT
    error = stopped(request, "runs/x", 37)
    assert error.exit_code == 130
    assert str(error) == ("stopped by SIGINT at iteration 37, with a checkpoint there in runs/x; continue with: "
                          "fastmaml train --resume runs/x")
    assert stopped(StopRequest(), "runs/x", 1).exit_code == 143  # a rank told by the others: torchrun's SIGTERM
    assert not stop_now(None, Cluster(), due=True)


def test_sigusr1_a_schedulers_early_warning_asks_to_stop_too():
    """SLURM's ``--signal=USR1@120`` warns ahead of its SIGTERM; SIGUSR1 would otherwise end the process."""
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_signals(announce=False) as request:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert request.signal is signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before
    assert stopped(request, "runs/x", 5).exit_code == 138


@contextlib.contextmanager
def caught_outside():
    """SIGTERM and SIGUSR1 recorded by this test's own handlers while it runs, instead of killing pytest
    when what is tested fails to hold them; the handlers before come back after."""
    leaked: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, frame: leaked.append(signum)) for sig in HELD_SIGNALS}
    try:
        yield leaked
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_signal_while_the_error_that_ended_training_is_told_is_held():
    """torchrun's SIGTERM after training raised (a lost peer) and before the error is printed."""
    told = []
    with caught_outside() as leaked:
        with hold_stop_signals() as held:
            try:
                with stop_on_signals(announce=False):
                    raise RuntimeError("Connection reset by peer")
            except RuntimeError:
                os.kill(os.getpid(), signal.SIGTERM)
                told.append("the error")
            assert held.signal is signal.SIGTERM
        assert told == ["the error"] and leaked == []
        os.kill(os.getpid(), signal.SIGTERM)  # after it, the handler before it acts again
        assert leaked == [signal.SIGTERM]


def test_a_signal_held_before_training_starts_asks_it_to_stop():
    with caught_outside() as leaked, hold_stop_signals() as held:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert held.signal is signal.SIGUSR1
        with stop_on_signals(announce=False) as request:
            assert request.signal is signal.SIGUSR1
            assert stop_now(request, Cluster(), due=False)
        with stop_on_signals(announce=False) as later:  # the hold's handler is back, the request kept
            assert later.signal is signal.SIGUSR1
    assert leaked == []


def test_inactive_or_outside_the_main_thread_nothing_is_held():
    before = {sig: signal.getsignal(sig) for sig in HELD_SIGNALS}
    with hold_stop_signals(active=False):
        assert {sig: signal.getsignal(sig) for sig in HELD_SIGNALS} == before
        with stop_on_signals(announce=False) as request:
            assert not request.requested
    seen = {}

    def body():
        with hold_stop_signals():
            seen["handlers"] = {sig: signal.getsignal(sig) for sig in HELD_SIGNALS}

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen["handlers"] == before


def test_a_torchrun_process_that_lost_another_says_so_although_torchrun_terminates_it(monkeypatch, capsys):
    """The race of a CI run: torchrun's SIGTERM reached rank 1 after its collective had failed and
    before it printed why; it died without a word. Now the line comes and the command returns 1."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    def train(args):
        with stop_on_signals(announce=False):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun, having seen rank 0 go
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5000")

    monkeypatch.setitem(cli.COMMANDS, "train", train)
    with caught_outside() as leaked:
        code = cli.main(["train", "sinusoid", "--out", "unused"])
    assert code == 1 and leaked == []
    err = capsys.readouterr().err
    assert err.startswith("fastmaml: error: another process of this torchrun job stopped; rank 1 lost it "
                          "(Connection closed by peer [127.0.0.1]:5000)"), err
