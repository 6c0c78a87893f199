"""`ita-segment`'s processes: one, or those `accelerate launch` (or `torchrun`) started, joined through accelerate's
`PartialState`.

Each process takes every `count`-th image from its `index` on (`share`), so that each image is written by exactly
one process and the outputs are those of one process. The processes meet only at a few points (`agree`): after
the checks, after loading the model (the main process encodes the vocabulary first, filling the disk cache the
others then read), before the work, and at the end (`gather` of the counts and failures). At each meeting a
process that failed tells the others, so that no process waits for one that has stopped: the main process reports
the error, the others end quietly with the same exit status.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from modeling_ita.loading import check_device

from ..errors import EXIT_BUG, EXIT_USAGE, ITADataError, ITAUsageError, user_error

__all__ = ["Processes", "Stopped", "start_processes"]

T = TypeVar("T")


class Stopped(Exception):
    """Raised in a process whose work stopped because another one failed (already reported there or by the main
    process); carries the exit status to return without printing anything."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Processes:
    """The process this is (`index` of `count`) and the meetings of all of them. One process: no meeting waits."""

    def __init__(self, index: int = 0, count: int = 1, state: Any = None) -> None:
        self.index = index
        self.count = count
        self.state = state

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def device(self, name: str | None) -> torch.device:
        """`--device` (checked: a device this machine has), or when not given each process's own (accelerate's
        `PartialState().device` under `accelerate launch`, else CUDA if available)."""
        if name is None and self.state is not None:
            device: torch.device = self.state.device
            return device
        try:
            return check_device(name)
        except ValueError as error:
            raise ITAUsageError(f"--device: {error}") from None

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of `items`: every `count`-th from `index` on."""
        return list(items[self.index :: self.count])

    def gather(self, value: Any) -> list[Any]:
        """`value` of every process, in process order (on every process)."""
        if self.state is None:
            return [value]
        from accelerate.utils import gather_object

        return list(gather_object([value]))

    def agree(self, work: Callable[[], T]) -> T:
        """Run `work` here, then meet: when any process failed, the failed ones raise their own error (the main
        process's user error is reported; the others' only when the main one did not fail), and the rest raise
        `Stopped` with the first failure's exit status."""
        if self.state is None:
            return work()
        error: BaseException | None = None
        try:
            result = work()
        except Exception as caught:  # noqa: BLE001 - told to the others, then raised again
            error = caught
        outcome = None
        if error is not None:
            found = user_error(error)
            outcome = (found.exit_status, str(found)) if found is not None else (EXIT_BUG, None)
        outcomes = self.gather(outcome)
        failed = [(index, item) for index, item in enumerate(outcomes) if item is not None]
        if not failed:
            return result
        if error is not None:
            if self.is_main or outcome is None or outcome[1] is None:
                raise error  # the main process reports its own error; a bug anywhere prints its traceback
            raise Stopped(outcome[0])  # a user error here: the main process reports it
        if not self.is_main:
            raise Stopped(failed[0][1][0])
        index, (status, message) = failed[0]  # the main process did not fail: it reports the other's error
        if message is None:
            raise Stopped(status)  # a bug there: that process printed its traceback
        raise (ITAUsageError if status == EXIT_USAGE else ITADataError)(f"process {index}: {message}")

    def wait(self) -> None:
        """Wait until every process gets here."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Leave the process group (accelerate's), if any."""
        if self.state is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start_processes(device_name: str | None) -> Processes:
    """This process's place in the run: the only one, unless started by `accelerate launch` or `torchrun` (which
    set `WORLD_SIZE`), whose processes join accelerate's process group: CPU processes (gloo) when `--device cpu`
    is given, `accelerate launch --cpu` was used or the machine has no accelerator, else one per accelerator."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    from accelerate import PartialState

    cpu = (
        (device_name is not None and device_name.strip().lower().startswith("cpu"))
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or not torch.accelerator.is_available()
    )
    state = PartialState(cpu=cpu)
    if state.num_processes != world_size:
        raise ITAUsageError(
            f"{world_size} processes were started, but accelerate found no way to join them on this machine's "
            f"{state.device.type}; give --device cpu, or start one process"
        )
    return Processes(state.process_index, state.num_processes, state)
