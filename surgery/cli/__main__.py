import sys

from surgery.cli.main import main

sys.exit(main())
