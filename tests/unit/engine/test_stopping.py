"""stop_on_signals: SIGINT / SIGTERM ask a run to stop instead of killing it; handlers come back."""

import os
import signal
import threading

import pytest

from fastmaml.engine.distributed import Cluster
from fastmaml.engine.stopping import StopRequest, stop_now, stop_on_signals, stopped


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
