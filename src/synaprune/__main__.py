import sys

from synaprune.cli import main

sys.exit(main())
