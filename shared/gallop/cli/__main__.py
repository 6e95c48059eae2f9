import sys

from gallop.cli import main

sys.exit(main())
