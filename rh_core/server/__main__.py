"""``python -m rh_core.server ...``: the cluster server (:mod:`rh_core.server.server` says what it takes).

With the ``process`` executor, the default environment's workers start here, before the server
imports the rest of what it runs on, and as forks of this process
(:func:`rh_core.support.processes.start_early`): a worker's own start-up (an interpreter and its
imports, about 0.1 s of CPU each) would otherwise follow the server's on a cold start, or compete
with it for the cores. Each becomes what ``python -m rh_core.worker`` would be. The executor takes
them over once it runs if they are what it would have started itself (the same interpreter,
command and environment), and stops them otherwise; options written in a way this module does not
read just leave the start to the executor, as do other executors.
"""

import os
import sys


def _start_default_workers(argv: list[str]) -> None:
    import runpy

    from rh_core.errors import UntrustedPathError
    from rh_core.support.files import private_directory
    from rh_core.support.processes import raise_open_files_limit, start_early

    executor, state_dir, workers = "process", None, None
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--executor":
            executor = next(arguments, None)
        elif argument == "--state-dir":
            state_dir = next(arguments, None)
        elif argument in ("-o", "--option"):
            key, _, value = next(arguments, "").partition("=")
            if key == "num_workers":
                workers = value
    if executor != "process" or not state_dir or (workers is not None and not workers.isdigit()):
        return
    try:
        state_dir = private_directory(state_dir)  # the server checks it again, and says why it refuses it
    except (UntrustedPathError, OSError):
        return
    raise_open_files_limit()  # the workers inherit it, as they do from the server
    endpoint = f"ipc://{state_dir}/logs.sock"  # the server's log endpoint: the executor compares
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
    import rh_core.worker.process  # noqa: F401  (imported once, here, for the server and every fork)

    for _ in range(int(workers or 0) or os.cpu_count() or 1):
        start_early(lambda fd: [sys.executable, "-m", "rh_core.worker", str(fd), endpoint],
                    lambda: runpy.run_module("rh_core.worker", run_name="__main__", alter_sys=True),
                    env={**os.environ, "PATH": path}, cwd=state_dir)


_start_default_workers(sys.argv[1:])

from rh_core.server.server import main

main()
