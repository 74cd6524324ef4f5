"""Where this process stands among the evaluation's processes: its shard, its device and the barrier that waits for
the others (from accelerate's ``PartialState``, or an explicit ``--shard``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from .errors import UserError

BARRIER_TIMEOUT = timedelta(hours=72)


@dataclass
class Processes:
    """Where this process stands among the evaluation's processes."""

    index: int = 0
    count: int = 1
    device: str | None = None  # the accelerator accelerate assigned to this process (None: the user's choice)
    barrier: object = None  # callable that waits for every process, when they are launched together

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        if self.barrier is not None:
            self.barrier()


def processes(explicit: tuple[int, int] | None = None, cpu: bool = False) -> Processes:
    """This process's shard: ``explicit`` (index, count) as given, otherwise from accelerate's ``PartialState``.

    ``PartialState`` reads what ``accelerate launch`` (or torchrun) set in the environment; a plain ``python`` run is one
    process. ``cpu`` asks for CPU processes (gloo/MPI), which accelerate otherwise ignores. With an explicit shard there
    is no barrier: the processes may run at different times or on different machines.
    """
    if explicit is not None:
        index, count = explicit
        if count < 1 or not 0 <= index < count:
            raise UserError(f"shard {index}/{count} is impossible: need 0 <= index < count")
        return Processes(index, count)
    from accelerate import PartialState

    # the barrier before the report may wait for the slowest shard for hours: NCCL's default of 10 minutes is too short
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    device = str(state.device) if state.num_processes > 1 and state.device.type != "cpu" else None
    return Processes(state.process_index, state.num_processes, device, state.wait_for_everyone)
