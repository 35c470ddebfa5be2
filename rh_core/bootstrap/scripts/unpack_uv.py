"""Run on a cluster machine by the bootstrap (its source sent with ``python -c``, by the interpreter
the new venv is made from): take the ``uv`` executable out of uv's wheel and keep it as TARGET.

argv: WHEEL MEMBER TARGET. A wheel is a zip file, so the standard library suffices; the executable
appears under TARGET whole or not at all (a bring-up cut short leaves no half-written uv that the
next probe would take for a working one). Python 3.6 syntax, as the probe's.
"""

import os
import shutil
import sys
import zipfile


def unpack(wheel, member, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = f"{target}.partial-{os.getpid()}"
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


if __name__ == "__main__":
    unpack(*sys.argv[1:4])
