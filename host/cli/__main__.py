import sys

from edgebp.host.cli.parser import main

sys.exit(main())
