import sys

from astralboot.common.cli.main import main

sys.exit(main())
