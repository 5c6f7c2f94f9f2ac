import sys

from rustci.cli import main

sys.exit(main())
