import sys

from backtrans.cli import main

sys.exit(main())
