import sys

from rexec_broker.command import main

sys.exit(main(prog="python -m rexec_broker"))
