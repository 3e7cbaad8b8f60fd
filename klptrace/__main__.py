import sys

from klptrace.cli import main

sys.exit(main())
