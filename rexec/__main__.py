import sys

from rexec.cli import main

sys.exit(main())
