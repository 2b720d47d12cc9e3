import sys

from ipvtrace.cli import main

sys.exit(main())
