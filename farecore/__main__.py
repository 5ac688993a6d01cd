import sys

from farecore.cli import main

sys.exit(main())
