"""Training in several processes on this machine's CPU (gloo), as ``tools/train_net.py
--num-cpu-processes N`` runs it.

detectron2 0.6's ``launch`` gives each process a GPU: it asserts CUDA, joins an NCCL group and
sets the process's CUDA device. The CPU needs none of that; what its processes need from the
launcher is the same otherwise: a process group of all of them, and detectron2's local process
group (``comm.get_local_rank()`` and ``get_local_size()`` read it), then the same ``main``.
"""

import os
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

__all__ = ["launch_cpu_processes"]


def launch_cpu_processes(
    main_func: Callable, num_processes: int, args: Sequence = (), timeout: timedelta = DEFAULT_TIMEOUT
) -> None:
    """Run ``main_func(*args)`` in ``num_processes`` new processes of one gloo process group on
    this machine (ranks 0 to N-1, rendezvous on a free local port). An error in one process ends
    the others and is raised here, with that process's traceback."""
    dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(
        _cpu_worker, nprocs=num_processes, args=(main_func, num_processes, dist_url, tuple(args), timeout), daemon=False
    )


def _cpu_worker(rank: int, main_func: Callable, world_size: int, dist_url: str, args: tuple, timeout: timedelta):
    if "OMP_NUM_THREADS" not in os.environ:
        # Each process would otherwise start a thread per core: N processes, N times too many threads.
        torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    try:
        comm._LOCAL_PROCESS_GROUP = dist.group.WORLD  # one machine: every process is local
        comm.synchronize()  # all have joined before the first collective of main_func
        main_func(*args)
    finally:
        dist.destroy_process_group()
