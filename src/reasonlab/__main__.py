import sys

from reasonlab.cli.main import main

sys.exit(main())
