import sys

from rh_core.worker.process import main

main(*sys.argv[1:4])
