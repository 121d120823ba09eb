import sys

from backtrans.cli import main

if __name__ == "__main__":
    sys.exit(main())
